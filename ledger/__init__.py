"""The audit log: RFC 9162 Merkle tree, C2SP checkpoints and cosignatures, storage, witness core,
tlog-tiles export and offline verification.

- `ledger.merkle`: hashing, tree, proofs, proof verification (pure);
- `ledger.entries`: entry records in RFC 8785 canonical JSON (pure);
- `ledger.note`, `ledger.checkpoint`: C2SP signed notes, checkpoints, cosignatures, quorum (pure);
- `ledger.witness`: the tlog-witness add-checkpoint state transition (pure) and its state file;
- `ledger.storage`: durable append-only entries and checkpoint history, group commit;
- `ledger.tiles`, `ledger.verify`: the export tree and its offline verifier;
- `ledger.receipt`: a requester's receipt and its verification (pure);
- `ledger.keys`: Ed25519 note keys as owner-only PEM files;
- `ledger.witness_service`: the witness node (tlog-witness over HTTPS with mutual TLS);
- `ledger.errors`: the `LedgerError` family.

docs/log-formats.md defines every byte format. This package imports neither enclave nor
coordinator and parses no command line; apart from the witness node it runs no server: the
coordinator and the CLI wire it.
"""
