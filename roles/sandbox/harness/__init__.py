"""The launcher and test harness that run inside the code sandbox.

`roles.sandbox.processes` starts it as ``python -I -S -c BOOTSTRAP SPEC_FD
STATUS_FD`` in a new session, with a scrubbed environment, as root or as the current
user (`BOOTSTRAP` puts troupe's root on ``sys.path`` only while it imports `main`,
then takes it off). One process, three phases:

1. Set-up (trusted, possibly root; `isolation`): read the run's spec (role, program
   or tests, nonce, limits, descriptors) from the SPEC_FD pipe and close it; enter a
   new network namespace; enter a new mount namespace with private tmpfs mounts over
   the work directory and the world-writable directories; set the rlimits; drop to
   the run's own uid; forbid leaving the process group (seccomp).
2. Report: write which isolation took effect to STATUS_FD and close it. A run whose
   report never arrives is the sandbox's failure, never the program's.
3. The role's work. Three roles:

   * ``program`` (`program`): run the untrusted program (stdin/stdout cases) and
     write a verdict, authenticated with an HMAC keyed by the nonce, to its verdict
     descriptor. The parent compares the output; the verdict only says the program
     ended normally.
   * ``candidate`` (`program`): run the untrusted program, then serve the judge's
     requests over two pipes: call this function, read that attribute, with
     arguments and results that travel as plain values (`wire.encode`). Everything
     in this process is the program's to tamper with, and nothing in it decides a
     verdict.
   * ``judge`` (`judge`): run the trusted test code, in a process of its own (its own
     uid when started as root, never dumpable, so the candidate can neither signal,
     trace nor read it). Names the tests take from the program are remote
     references; what comes back from the candidate is rebuilt from plain data by
     this process (an exact type per value: never the candidate's objects, so never
     its ``__eq__``, ``__hash__`` or ``__bool__``), and the comparisons of the test
     run here. The expected values never leave this process. It writes the signed
     verdict.

   The exit status is never read. The nonce is never written anywhere: a process of
   the run may read a verdict (reopening ``/proc/self/fd/N``) between the harness's
   exit and the final SIGKILL, and must learn nothing it could sign another with.

Why one process per role: after the privilege drop nothing is exec'd and nothing is
imported from troupe (every module of this package is imported before set-up), so
the interpreter is never re-read from a directory the sandbox uid cannot traverse,
and nothing can be swapped in between the phases. Why ``-I -S``: no environment
variable, user site or ``.pth`` file runs code while the process is still
privileged; site-packages are added after the drop when the spec asks for them.

Standard library only, in this package and in the ``roles`` and ``roles.sandbox``
packages above it: it runs before anything else is importable.
"""
