# Why: the daemon must notice a socket on a protected port's public address (then a rejected SYN would
# reach it). The reader is pinned on /proc/net/tcp{,6} text as the kernel writes it: listeners first,
# addresses as host-order 32-bit words.
from pathlib import Path

from stealth.guard import public_listeners

HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def row(local: str, state: str) -> str:
    return f"   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 1\n"


def test_public_listeners_on_protected_ports_are_found(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(HEAD + row("0100007F:0016", "0A")  # 127.0.0.1:22: the backend, fine
                                  + row("00000000:08AE", "0A")  # 0.0.0.0:2222: not protected
                                  + row("0164A8C0:0016", "0A")  # 192.168.100.1:22: exposed
                                  + row("0164A8C0:0016", "01"))  # established: listeners end here
    (tmp_path / "tcp6").write_text(HEAD + row("00000000000000000000000001000000:0016", "0A")  # [::1]:22
                                   + row("00000000000000000000000000000000:0016", "0A"))  # [::]:22
    assert public_listeners([22, 443], tmp_path) == ["192.168.100.1:22", "[::]:22"]
    assert public_listeners([443], tmp_path) == []


def test_missing_proc_files_mean_nothing_found(tmp_path: Path) -> None:
    assert public_listeners([22], tmp_path / "absent") == []
