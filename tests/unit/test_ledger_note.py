"""Signed notes, checkpoints and cosignatures (C2SP signed-note, tlog-checkpoint, tlog-cosignature).

Known answers come from golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier, TestSign,
TestOpen: the PeterNeumann and EnochRoot keys and signatures) and from the examples in
C2SP signed-note.md and tlog-checkpoint.md. Cosignature/v1 has no published vector with a key, so
its key ID and message layout are checked against the spec's definitions byte by byte.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import (
    Checkpoint,
    add_signatures,
    cosign,
    open_checkpoint,
    sign_checkpoint,
    verify_cosigned,
)
from ledger.errors import MalformedNoteError, QuorumError, SignatureError, UnknownLogError
from ledger.note import (
    SIG_TYPE_COSIGNATURE_V1,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteSignature,
    key_id,
    open_note,
    sign_note,
)

# golang.org/x/mod/sumdb/note/note_test.go
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
    "ox33WWd1RvMc+QQ=\n"
)


def _peter_signer() -> Ed25519Signer:
    raw = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 0x01
    return Ed25519Signer("PeterNeumann", Ed25519PrivateKey.from_private_bytes(raw[1:]))


def test_go_vector_keys_and_signature() -> None:
    signer = _peter_signer()
    assert signer.verifier().to_vkey() == PETER_VKEY
    assert Ed25519Verifier.from_vkey(PETER_VKEY).key_id.hex() == "c74f20a3"
    assert sign_note(TEXT, [signer]) == (TEXT + "\n" + PETER_SIG).encode()


def test_go_vector_open() -> None:
    peter = Ed25519Verifier.from_vkey(PETER_VKEY)
    enoch = Ed25519Verifier.from_vkey(ENOCH_VKEY)
    msg = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    one = open_note(msg, [peter])
    assert one.text == TEXT
    assert [s.name for _, s in one.verified] == ["PeterNeumann"]
    assert [s.name for s in one.unverified] == ["EnochRoot"]
    both = open_note(msg, [peter, enoch])
    assert [s.name for _, s in both.verified] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(SignatureError):
        open_note(msg, [])
    # A signature from a known key that fails rejects the note.
    with pytest.raises((SignatureError, MalformedNoteError)):
        open_note((TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]).encode(), [peter])
    # Duplicates count once.
    dup = open_note((TEXT + "\n" + PETER_SIG + PETER_SIG).encode(), [peter])
    assert len(dup.verified) == 1


@pytest.mark.parametrize(
    "msg",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2p"
        "ZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_go_vector_malformed(msg: str) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(msg.encode(), [Ed25519Verifier.from_vkey(PETER_VKEY)])


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(MalformedNoteError):
        Note.from_bytes(b"\xff" + (TEXT + "\n" + PETER_SIG).encode())


def test_vkey_manglings_refused() -> None:
    # TestNewVerifier: every strict substring and every single-byte change is refused.
    b = PETER_VKEY
    for i in range(len(b)):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(MalformedNoteError):
                    Ed25519Verifier.from_vkey(b[i:j])
    for i in range(len(b)):
        mangled = b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :]
        with pytest.raises(MalformedNoteError):
            Ed25519Verifier.from_vkey(mangled)
    with pytest.raises(MalformedNoteError):  # wrong key length, adjusted key hash
        Ed25519Verifier.from_vkey(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(MalformedNoteError):  # unknown algorithm, adjusted key hash
        Ed25519Verifier.from_vkey(
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )


def test_spec_example_parses() -> None:
    # c2sp.org/tlog-checkpoint and tlog-cosignature examples.
    example = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
        "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dl"
        "rDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    ).encode()
    note = Note.from_bytes(example)
    cp = Checkpoint.from_text(note.text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    witness = note.signatures[1]
    assert len(witness.signature) == 72
    assert int.from_bytes(witness.signature[:8], "big") == 1679315147  # the spec's "time" line
    assert note.to_bytes() == example


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n",
        "o\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n",
        "o\n1\nAAAA\n",
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\nx\n",
        "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",
    ],
)
def test_bad_checkpoint_bodies(text: str) -> None:
    with pytest.raises(MalformedNoteError):
        Checkpoint.from_text(text)


def _keys(n: int) -> tuple[Ed25519Signer, list[Ed25519Signer]]:
    log = Ed25519Signer("log.example/dataisland", Ed25519PrivateKey.generate())
    witnesses = [
        Ed25519Signer(
            f"witness.example/w{i}", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1
        )
        for i in range(n)
    ]
    return log, witnesses


def test_cosignature_format_matches_spec() -> None:
    _, (w,) = _keys(1)
    cp = Checkpoint("log.example/dataisland", 5, hashlib.sha256(b"r").digest())
    sig = cosign(cp, cosigner=w, timestamp=1679315147)
    pub = w.verifier().public_bytes
    assert sig.key_id == hashlib.sha256(w.name.encode() + b"\n\x04" + pub).digest()[:4]
    assert sig.key_id == key_id(w.name, 0x04, pub)
    assert sig.signature[:8] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + cp.to_text().encode()
    w.private_key.public_key().verify(sig.signature[8:], message)
    vkey = w.verifier().to_vkey()
    assert base64.b64decode(vkey.split("+", 2)[2])[0] == 0x04
    assert Ed25519Verifier.from_vkey(vkey).sig_type == SIG_TYPE_COSIGNATURE_V1


def test_verify_cosigned_quorum() -> None:
    log, ws = _keys(4)
    origin = log.name
    cp = Checkpoint(origin, 10, hashlib.sha256(b"root").digest())
    signed = sign_checkpoint(cp, signer=log)
    cosigs = [cosign(cp, cosigner=w, timestamp=1_700_000_000 + i) for i, w in enumerate(ws[:3])]
    note = add_signatures(signed, cosigs)
    wv = [w.verifier() for w in ws]
    got = verify_cosigned(
        note, origin=origin, log_verifier=log.verifier(), witness_verifiers=wv, quorum=3
    )
    assert got.checkpoint == cp
    assert [c.timestamp for c in got.cosignatures] == [1_700_000_000, 1_700_000_001, 1_700_000_002]
    with pytest.raises(QuorumError):
        verify_cosigned(
            note, origin=origin, log_verifier=log.verifier(), witness_verifiers=wv, quorum=4
        )
    # The same cosignature twice counts once.
    twice = add_signatures(signed, [cosigs[0]])
    twice = (twice.decode() + cosigs[0].line()).encode()
    with pytest.raises(QuorumError):
        verify_cosigned(
            twice, origin=origin, log_verifier=log.verifier(), witness_verifiers=wv, quorum=2
        )
    # A cosignature over another checkpoint fails loudly.
    other = Checkpoint(origin, 11, hashlib.sha256(b"other").digest())
    forged = add_signatures(signed, [cosign(other, cosigner=ws[3], timestamp=1)])
    with pytest.raises(SignatureError):
        verify_cosigned(
            forged, origin=origin, log_verifier=log.verifier(), witness_verifiers=wv, quorum=1
        )
    # A wrong timestamp in the line breaks the signature.
    bad = NoteSignature(
        cosigs[0].name, cosigs[0].key_id, (5).to_bytes(8, "big") + cosigs[0].signature[8:]
    )
    with pytest.raises(SignatureError):
        verify_cosigned(
            add_signatures(signed, [bad]),
            origin=origin,
            log_verifier=log.verifier(),
            witness_verifiers=wv,
            quorum=1,
        )
    # Unknown witnesses are ignored; the wrong origin and a missing log signature are refused.
    _, strangers = _keys(2)
    with pytest.raises(QuorumError):
        verify_cosigned(
            note,
            origin=origin,
            log_verifier=log.verifier(),
            witness_verifiers=[s.verifier() for s in strangers],
            quorum=1,
        )
    with pytest.raises(UnknownLogError):
        verify_cosigned(
            note,
            origin="other.example",
            log_verifier=log.verifier(),
            witness_verifiers=wv,
            quorum=1,
        )
    other_log, _ = _keys(0)
    with pytest.raises(SignatureError):
        open_checkpoint(note, origin=origin, log_verifier=other_log.verifier())
    with pytest.raises(MalformedNoteError):
        verify_cosigned(
            note, origin=origin, log_verifier=log.verifier(), witness_verifiers=wv, quorum=0
        )
    with pytest.raises(MalformedNoteError):
        verify_cosigned(
            note,
            origin=origin,
            log_verifier=log.verifier(),
            witness_verifiers=[wv[0], wv[0]],
            quorum=1,
        )
