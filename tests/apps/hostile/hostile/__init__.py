"""A hostile-but-approved Flower app: every route out of a site, tried from inside."""
