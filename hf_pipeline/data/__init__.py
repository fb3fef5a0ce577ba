"""The web-data stage (FineWeb's recipe on datatrove): readers, filters and formatters, pipeline, stats.

Work in progress (issue 3): the steps land here one by one, each a datatrove ``PipelineStep``.
"""
