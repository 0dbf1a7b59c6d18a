"""Running a study: the orchestrator's loop and what feeds it, starting and talking to workers
(the fork server, slots), heartbeats and recovery, the epoch budget, importing past runs, progress.

The only package that writes trials to the study store. Imports `train`, `data`, `spec`,
`search` and `store`.
"""
