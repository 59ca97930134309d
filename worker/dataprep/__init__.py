"""Data preparation: read spreadsheets and exports into training examples, check them, fix them.

`checks` is the one set of data checks: `whetstone prepare-data` reports all of them, and the
API's upload rejects a file for exactly the `error` findings (the rules of `worker.training.validation`).
"""
