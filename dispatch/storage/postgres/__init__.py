"""The PostgreSQL backend: the ports (``dispatch.service.ports``) over a shared database, so
any number of server processes on any number of machines serve one farm.

- ``pool``: connections (timeouts, the password kept out of logs), and the one place
  a database failure becomes ``errors.Unavailable``;
- ``migrate``: the versioned schema in ``migrations/``, applied under an advisory lock;
- ``backend``: the unit of work; ``jobs`` and ``records``: the repositories, over
  the rows of ``job_rows``;
- ``lease``: which instance runs the background work, and the restart grace;
- ``copy``: moving a farm between a state file and a database;
- ``cli``: ``dispatch-server db upgrade`` and ``dispatch-server copy-state``.
"""
