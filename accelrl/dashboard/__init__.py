"""The live web view of runs: ``accelrl dashboard RUN_DIR ...`` (see ``docs/dashboard.md``).

It discovers runs under the given folders (:mod:`accelrl.dashboard.discovery`), follows their
files as they grow (:mod:`accelrl.dashboard.data`, on the incremental readers of
:mod:`accelrl.runfiles`), and draws one page per run kind (:mod:`accelrl.dashboard.pages`)
in a Bokeh server (:mod:`accelrl.dashboard.server`). It never writes to a run or a machine.
"""
