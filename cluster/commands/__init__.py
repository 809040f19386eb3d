"""The commands: the CLI (``cli``, its parser ``args``, exit statuses ``exits``), the Python API
(``api``), Ray jobs (``jobs``), ``doctor``, and the commands over a finished result (``results``:
report, search, index). They parse, validate and print; the work is the runtime's."""
