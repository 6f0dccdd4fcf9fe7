"""Background jobs as the operator sees them: the periodic catalog, one recorded run per execution,
and the wrapper every job runs in (no overlap, a JOB_CRASH alert when it fails)."""
