#!/usr/bin/env python3
"""Independent verifier for the Nexus certificate transparency log (ca/src/tlog.rs).

Written from RFC 6962 / RFC 9162 section 2.1 and the encodings documented in the module docs
of ca/src/tlog.rs, with the Python standard library only, so that it shares no code with the
Rust implementation it checks.

Reads one JSON document on stdin:

    {
      "leaves":      ["<hex leaf bytes>", ...],              the log's leaves, in order
      "entries":     [<LogEntry JSON>, ...],                 optional: re-encoded here and
                                                             compared with "leaves"
      "roots":       [{"size": n, "root": "<hex>"}, ...],
      "inclusion":   [{"index": i, "size": n, "root": "<hex>",
                       "leaf_hash": "<hex>", "proof": ["<hex>", ...]}, ...],
      "consistency": [{"first": m, "second": n, "first_root": "<hex>",
                       "second_root": "<hex>", "proof": ["<hex>", ...]}, ...],
      "tree_heads":  [{"log_id": "...", "size": n, "root": "<hex>", "timestamp_ms": t,
                       "signing_input": "<hex>"}, ...]
    }

Every claim is checked against trees recomputed here from the leaves: roots against MTH,
inclusion proofs against RFC 6962 PATH and with the RFC 9162 2.1.3.2 verifier, consistency
proofs against RFC 6962 PROOF and with the RFC 9162 2.1.4.2 verifier, tree heads against the
recomputed root and signing input (ed25519 signatures are not checked: the standard library
has no ed25519). Exits 0 and prints a summary when everything holds; otherwise prints every
mismatch to stderr and exits 1 (2 for unreadable input).
"""

import base64
import functools
import hashlib
import json
import sys

EMPTY_ROOT = hashlib.sha256(b"").digest()
STH_CONTEXT = b"nexus-sth-v1\x00"


def leaf_hash(leaf):
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n):
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Tree:
    """The leaves of a log and the RFC 6962 definitions over them, computed recursively."""

    def __init__(self, leaf_hashes):
        self.hashes = leaf_hashes
        self.mth = functools.lru_cache(maxsize=None)(self._mth)

    def _mth(self, start, end):
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self.hashes[start]
        k = split(n)
        return node_hash(self.mth(start, start + k), self.mth(start + k, end))

    def path(self, m, start, end):
        """RFC 6962 PATH(m, D[start:end])."""
        n = end - start
        if n <= 1:
            return []
        k = split(n)
        if m < k:
            return self.path(m, start, start + k) + [self.mth(start + k, end)]
        return self.path(m - k, start + k, end) + [self.mth(start, start + k)]

    def subproof(self, m, start, end, complete):
        """RFC 6962 SUBPROOF(m, D[start:end], b)."""
        n = end - start
        if m == n:
            return [] if complete else [self.mth(start, end)]
        k = split(n)
        if m <= k:
            return self.subproof(m, start, start + k, complete) + [self.mth(start + k, end)]
        return self.subproof(m - k, start + k, end, False) + [self.mth(start, start + k)]

    def proof(self, first, second):
        """RFC 6962 PROOF(first, D[second]); empty when there is nothing to prove."""
        if first == 0 or first == second:
            return []
        return self.subproof(first, 0, second, True)


def verify_inclusion(leaf, index, size, proof, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_root, second_root, proof):
    """RFC 9162 section 2.1.4.2, plus the trivial cases the RFC leaves to the caller."""
    if first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


def encode_entry(entry):
    """The version-1 leaf encoding of a LogEntry given as JSON (see ca/src/tlog.rs)."""
    kind = entry["kind"]
    if kind not in ("issued", "revoked"):
        raise ValueError("unknown kind %r" % kind)
    serial = bytes.fromhex(entry["serial"])
    issuer = bytes.fromhex(entry["issuer"])
    node_id = bytes.fromhex(entry["node_id"])
    if not 1 <= len(serial) <= 255 or len(issuer) != 32 or len(node_id) != 16:
        raise ValueError("bad field length")
    out = bytes([1, 0 if kind == "issued" else 1])
    out += int(entry["timestamp_ms"]).to_bytes(8, "big")
    out += issuer + node_id + bytes([len(serial)]) + serial
    if kind == "issued":
        der = base64.b64decode(entry["certificate_der"], validate=True)
        if not der:
            raise ValueError("empty certificate")
        out += len(der).to_bytes(4, "big") + der
    elif "certificate_der" in entry:
        raise ValueError("a revoked entry carries a certificate")
    return out


def signing_input(head):
    log_id = head["log_id"].encode("utf-8")
    if not 1 <= len(log_id) <= 255:
        raise ValueError("log id must be 1 to 255 bytes")
    return (
        STH_CONTEXT
        + bytes([len(log_id)])
        + log_id
        + int(head["size"]).to_bytes(8, "big")
        + int(head["timestamp_ms"]).to_bytes(8, "big")
        + bytes.fromhex(head["root"])
    )


def hexes(values):
    return [bytes.fromhex(v) for v in values]


def main():
    try:
        doc = json.load(sys.stdin)
        leaves = hexes(doc["leaves"])
    except (ValueError, KeyError, TypeError) as e:
        print("tlog_verify: unreadable input: %s" % e, file=sys.stderr)
        return 2

    tree = Tree([leaf_hash(leaf) for leaf in leaves])
    n = len(leaves)
    errors = []
    checked = {"entries": 0, "roots": 0, "inclusion": 0, "consistency": 0, "tree_heads": 0}

    def fail(msg):
        errors.append(msg)

    entries = doc.get("entries")
    if entries is not None:
        if len(entries) != n:
            fail("%d entries but %d leaves" % (len(entries), n))
        for i, (entry, leaf) in enumerate(zip(entries, leaves)):
            try:
                encoded = encode_entry(entry)
            except (ValueError, KeyError, TypeError) as e:
                fail("entry %d cannot be encoded: %s" % (i, e))
                continue
            if encoded != leaf:
                fail("entry %d: its canonical encoding differs from leaf %d" % (i, i))
            checked["entries"] += 1

    def own_root(size, what):
        if not 0 <= size <= n:
            fail("%s: size %d is outside the log (%d leaves)" % (what, size, n))
            return None
        return tree.mth(0, size)

    for claim in doc.get("roots", []):
        size = claim["size"]
        root = own_root(size, "root claim")
        if root is not None and root != bytes.fromhex(claim["root"]):
            fail("root of size %d: claimed %s, recomputed %s" % (size, claim["root"], root.hex()))
        checked["roots"] += 1

    for claim in doc.get("inclusion", []):
        index, size = claim["index"], claim["size"]
        what = "inclusion proof of leaf %d in size %d" % (index, size)
        proof = hexes(claim["proof"])
        root = own_root(size, what)
        checked["inclusion"] += 1
        if root is None:
            continue
        if not 0 <= index < size:
            fail("%s: index out of range" % what)
            continue
        if "root" in claim and bytes.fromhex(claim["root"]) != root:
            fail("%s: claimed root %s is not the recomputed %s" % (what, claim["root"], root.hex()))
        leaf = tree.hashes[index]
        if "leaf_hash" in claim and bytes.fromhex(claim["leaf_hash"]) != leaf:
            fail("%s: claimed leaf hash is not the hash of leaf %d" % (what, index))
        if proof != tree.path(index, 0, size):
            fail("%s: differs from RFC 6962 PATH" % what)
        if not verify_inclusion(leaf, index, size, proof, root):
            fail("%s: does not verify (RFC 9162 2.1.3.2)" % what)

    for claim in doc.get("consistency", []):
        first, second = claim["first"], claim["second"]
        what = "consistency proof from size %d to %d" % (first, second)
        proof = hexes(claim["proof"])
        r1, r2 = own_root(first, what), own_root(second, what)
        checked["consistency"] += 1
        if r1 is None or r2 is None:
            continue
        if first > second:
            fail("%s: first size after the second" % what)
            continue
        if "first_root" in claim and bytes.fromhex(claim["first_root"]) != r1:
            fail("%s: claimed first root is not the recomputed one" % what)
        if "second_root" in claim and bytes.fromhex(claim["second_root"]) != r2:
            fail("%s: claimed second root is not the recomputed one" % what)
        if proof != tree.proof(first, second):
            fail("%s: differs from RFC 6962 PROOF" % what)
        if not verify_consistency(first, second, r1, r2, proof):
            fail("%s: does not verify (RFC 9162 2.1.4.2)" % what)

    for head in doc.get("tree_heads", []):
        what = "tree head %r of size %d" % (head.get("log_id"), head.get("size", -1))
        checked["tree_heads"] += 1
        root = own_root(head["size"], what)
        if root is not None and bytes.fromhex(head["root"]) != root:
            fail("%s: root is not the recomputed %s" % (what, root.hex()))
        try:
            if signing_input(head) != bytes.fromhex(head["signing_input"]):
                fail("%s: signing input differs from the documented encoding" % what)
        except (ValueError, KeyError) as e:
            fail("%s: %s" % (what, e))

    if errors:
        for msg in errors[:50]:
            print("tlog_verify: MISMATCH: %s" % msg, file=sys.stderr)
        if len(errors) > 50:
            print("tlog_verify: ... and %d more" % (len(errors) - 50), file=sys.stderr)
        return 1
    summary = ", ".join("%d %s" % (v, k) for k, v in checked.items())
    print("tlog_verify: OK: %d leaves; checked %s" % (n, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
