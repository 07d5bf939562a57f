# Why: the protocol core. Nothing under stealth.core does I/O: no sockets, files, subprocesses, clock
# or random numbers. Time and randomness arrive as arguments, so every rule here is unit-testable.
