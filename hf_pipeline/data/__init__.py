"""The web-data stage: FineWeb's recipe as datatrove steps (``pipeline.run`` writes ``RUN/data/``).

    readers.py   WARC/WET/HTML(.gz)/JSONL (url + html) -> datatrove Documents, every skip counted by reason
    steps.py     the steps' classes and the arguments step_args / executor_options may set (checked at config time)
    extract.py   HTML -> main text (resiliparse + the article container), with a timeout
    lid.py       offline fastText language ID (the lid.176 model ships in data/resources/)
    filters.py   URL filter (offline suffix list, allow list), the fast spaCy word tokenizer, the early-stop C4 filter
    pii.py       emails, public IPs and phone numbers -> placeholders (a datatrove formatter)
    pipeline.py  the stage: the steps in FineWeb's order as datatrove stages, executors (local, Slurm, Ray), resume
    stats.py     per-step documents and characters in and out, drop reasons, seconds -> stats.json
"""
