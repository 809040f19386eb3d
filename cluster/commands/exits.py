"""The exit statuses of every ``theme-engine`` command (one place: the run, doctor and job commands)."""

EXIT_OK = 0
EXIT_ERROR = 1  # the run or job failed for a reason its message gives
EXIT_USAGE = 2  # bad flags, settings or input paths: nothing ran
EXIT_INTERRUPTED = 130  # stopped (Ctrl-C, SIGTERM, ray job stop): resumable
