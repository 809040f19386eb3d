"""The runtime: the stage driver (``driver``) and the stages (``stages``), the update built on
them (``update``), Ray's session and resource plan (``ray_session``, ``loopback``, ``reaper``),
the output folder's state (``state``), retries (``gather``), progress and metrics. It never
imports the commands."""
