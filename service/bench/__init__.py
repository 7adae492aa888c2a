"""`python -m service bench`: load-testing a database through the service, beside the limit app.

runner.py   the orchestration: databases, servers, rounds, the RSS check, the report
scenarios.py what each scenario's requests look like
load.py     the load generators: wrk, or the built-in asyncio one
sizes.py    how much social data to seed (shared with `python -m service seed`)
"""
