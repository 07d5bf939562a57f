# stealth: single-SYN port knocking. The package root only names the version; the protocol lives in
# stealth.core (pure, no I/O) and each outside thing has one adapter module beside it.
__version__ = "0.1.0"
