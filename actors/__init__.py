"""Where work runs: Ray actors and Ray Data callables, each calling ``engine`` kernels on its own device."""
