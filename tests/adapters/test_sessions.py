# Why: the session keys the daemon hands the acceptor decide whether a sealed connection can prove
# itself; the channel must carry each key to exactly one relay, keep none forever, and stay bounded.
from stealth.core.secret import Secret
from stealth.sessions import KEY_TTL_SECONDS, MAX_KEYS, KeyStore, key_channel, pack_key, send_key, unpack_key

SRC4, SRC6 = bytes([198, 51, 100, 2]), bytes(15) + b"\1"


def test_records_round_trip_and_garbage_is_ignored() -> None:
    key = Secret(bytes(range(32)))
    assert unpack_key(pack_key(SRC4, 40000, 22, key)) == ((SRC4, 40000, 22), key)
    assert unpack_key(pack_key(SRC6, 1, 65535, key)) == ((SRC6, 1, 65535), key)
    assert unpack_key(b"short") is None
    assert unpack_key(b"\7" + bytes(53)) is None  # an address of neither 4 nor 16 bytes


def test_each_key_goes_to_one_relay_and_expires() -> None:
    send, receive = key_channel()
    store = KeyStore(receive)
    key = Secret(bytes(32))
    assert send_key(send, SRC4, 40000, 22, key)
    assert store.take((SRC4, 40000, 22)) == key
    assert store.take((SRC4, 40000, 22)) is None  # taken once
    assert send_key(send, SRC4, 40002, 22, key)
    store.drain(now=0.0)
    store.drain(now=KEY_TTL_SECONDS + 1)
    assert store.take((SRC4, 40002, 22)) is None  # expired
    send.close()
    receive.close()


def test_the_store_is_bounded() -> None:
    store = KeyStore(None)
    key = Secret(bytes(32))
    for i in range(MAX_KEYS + 10):
        store.keys[(SRC4, i % 65536, i // 65536)] = (key, 1e9)
    store.drain(now=0.0)
    assert len(store.keys) == MAX_KEYS
