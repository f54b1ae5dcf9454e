"""Running a transcode: the run's configuration (:mod:`.config`), the shard task (:mod:`.task`,
:mod:`.isolation`), planning and publishing (:mod:`.driver`), and Dask at the edge
(:mod:`.cluster`).
"""
