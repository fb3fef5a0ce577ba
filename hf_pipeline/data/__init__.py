"""The web-data stage: FineWeb's recipe as datatrove steps (``pipeline.run`` writes ``RUN/data/``).

    readers.py   WARC/WET/HTML(.gz)/JSONL (url + html) -> datatrove Documents, every skip counted by reason
    steps.py     the steps' classes and the arguments step_args / executor_options may set (checked at config time)
    extract.py   HTML -> main text (resiliparse + the article container), with a timeout
    lid.py       offline fastText language ID (the lid.176 model ships in data/resources/)
    filters.py   URL filter (offline suffix list, allow list, block list as a memory-mapped trie), the fast spaCy
                 word tokenizer, fast Gopher/C4/FineWeb filters with datatrove's decisions
    quality.py   model-based classifiers: the quality stage (a fastText classifier, reference vs crawl text) and the
                 data stage's classifier step (quality, toxicity/NSFW; fastText or transformers, by path or Hub id)
    pii.py       emails, public IPs and phone numbers -> placeholders (a datatrove formatter)
    pipeline.py  the stage: the steps in FineWeb's order as datatrove stages, executors (local, Slurm, Ray), resume
    stats.py     per-step documents and characters in and out, drop reasons, seconds -> stats.json
"""
