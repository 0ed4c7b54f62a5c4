"""Who is calling: the Principal every later stage (limits, usage, logs) keys on."""
