#!/usr/bin/env python3
"""A device-class transcript: the same sequence of commands sent with SG_IO
to one device, one JSON line per command with what came back (status,
sense key, ASC/ASCQ, FILEMARK/EOM/ILI, the INFORMATION field, residual,
the head of the data read) and the device's state after it (a tape's
position from READ POSITION; a zoned disk's first zones from REPORT
ZONES).

scsi_debug's tape keeps only 4 bytes of each block, so payloads are told
apart by their first 4 bytes and nothing else of them is compared.

  transcript.py run tape|zbc SG_DEVICE   the transcript on stdout
  transcript.py compare A.jsonl B.jsonl  the steps where two transcripts
                                         differ (one line each); exit 1 if any
"""
import json
import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
from sgio import sgio  # noqa: E402


def cdb(*b):
    return bytes(b)


def block(tag, size):
    """A block whose first 4 bytes name it."""
    return tag.encode()[:4].ljust(4, b"_") + bytes(size - 4)


def mode_select_blksize(size):
    """MODE SELECT(6) parameter list: header and one block descriptor."""
    return bytes([0, 0, 0x10, 8, 0, 0, 0, 0, 0]) + size.to_bytes(3, "big")


def read6(n, fixed=False, sili=False):
    return cdb(0x08, (2 if sili else 0) | (1 if fixed else 0), *n.to_bytes(3, "big"), 0)


def write6(n, fixed=False):
    return cdb(0x0A, 1 if fixed else 0, *n.to_bytes(3, "big"), 0)


def space(code, count):
    return cdb(0x11, code, *(count & 0xFFFFFF).to_bytes(3, "big"), 0)


def locate(blk):
    return cdb(0x2B, 0, 0, *blk.to_bytes(4, "big"), 0, 0, 0)


REWIND = cdb(0x01, 0, 0, 0, 0, 0)
WEOF = lambda n: cdb(0x10, 0, 0, 0, n, 0)  # noqa: E731

# (name, CDB, data-in length or data-out bytes)
TAPE = [
    ("rewind", REWIND, 0),
    ("read block limits", cdb(0x05, 0, 0, 0, 0, 0), 6),
    ("mode sense(6), block descriptor", cdb(0x1A, 0, 0, 0, 12, 0), 12),
    ("write variable 512 A", write6(512), block("A512", 512)),
    ("write variable 1024 B", write6(1024), block("B1K_", 1024)),
    ("write variable 2048 C", write6(2048), block("C2K_", 2048)),
    ("write filemarks 1", WEOF(1), 0),
    ("write variable 4096 D", write6(4096), block("D4K_", 4096)),
    ("write filemarks 2", WEOF(2), 0),
    ("rewind", REWIND, 0),
    ("read variable 512 of 512", read6(512), 512),
    ("read 2048 of a 1024 block (ILI, shorter)", read6(2048), 2048),
    ("read 1024 of a 2048 block (ILI, longer)", read6(1024), 1024),
    ("read 512 at a filemark", read6(512), 512),
    ("read variable 4096 of 4096", read6(4096), 4096),
    ("read 512 at the second filemark", read6(512), 512),
    ("read 512 at end of data (BLANK CHECK)", read6(512), 512),
    ("space filemarks -1", space(1, -1), 0),
    ("locate block 1", locate(1), 0),
    ("read 1024 of 1024 after locate", read6(1024), 1024),
    ("read 4096 SILI of a 2048 block", read6(4096, sili=True), 4096),
    ("space blocks -1", space(0, -1), 0),
    ("space to end of data", space(3, 0), 0),
    ("read at end of data", read6(512), 512),
    ("mode select(6) fixed 512", cdb(0x15, 0x10, 0, 0, 12, 0), mode_select_blksize(512)),
    ("mode sense(6) after select", cdb(0x1A, 0, 0, 0, 12, 0), 12),
    ("write fixed 4 x 512", write6(4, fixed=True),
     b"".join(block(f"E{i}__", 512) for i in range(4))),
    ("write filemarks 1", WEOF(1), 0),
    ("space filemarks -1", space(1, -1), 0),
    ("space blocks -4", space(0, -4), 0),
    ("read fixed 4 x 512", read6(4, fixed=True), 2048),
    ("read fixed 2 at a filemark", read6(2, fixed=True), 1024),
    ("locate block 0", locate(0), 0),
    ("read fixed 1 of a 512 variable block", read6(1, fixed=True), 512),
    ("read fixed 1 of a 1024 block (ILI)", read6(1, fixed=True), 512),
    ("mode select(6) variable", cdb(0x15, 0x10, 0, 0, 12, 0), mode_select_blksize(0)),
    ("reserve(6)", cdb(0x16, 0, 0, 0, 0, 0), 0),
    ("release(6)", cdb(0x17, 0, 0, 0, 0, 0), 0),
    ("rewind", REWIND, 0),
    ("erase (short)", cdb(0x19, 0, 0, 0, 0, 0), 0),
    ("rewind", REWIND, 0),
    ("read after erase", read6(512), 512),
]

# A host-managed zoned disk of 4 MiB zones, 512-byte blocks, zone 0
# conventional (scsi_debug zbc=managed zone_size_mb=4 zone_nr_conv=1).
ZONE = 8192


def write16(lba, blocks):
    return cdb(0x8A, 0, *lba.to_bytes(8, "big"), *blocks.to_bytes(4, "big"), 0, 0)


def read16(lba, blocks):
    return cdb(0x88, 0, *lba.to_bytes(8, "big"), *blocks.to_bytes(4, "big"), 0, 0)


def zone_out(sa, lba, all_zones=False):
    """ZONE ACTION OUT: 1 close, 2 finish, 3 open, 4 reset write pointer."""
    return cdb(0x94, sa, *lba.to_bytes(8, "big"), 0, 0, 0, 0, 1 if all_zones else 0, 0)


def report_zones(lba, length, options=0):
    return cdb(0x95, 0x00, *lba.to_bytes(8, "big"), *length.to_bytes(4, "big"), options, 0)


def data(tag, blocks):
    return b"".join(f"{tag}{i:04x}".encode().ljust(512, b".") for i in range(blocks))


ZBC = [
    ("report zones, all", report_zones(0, 4096), 4096),
    ("write 8 at zone 1's write pointer", write16(ZONE, 8), data("A", 8)),
    ("write 8 at zone 1's start again (unaligned)", write16(ZONE, 8), data("B", 8)),
    ("write 8 at zone 1's write pointer", write16(ZONE + 8, 8), data("C", 8)),
    ("read 16 of zone 1", read16(ZONE, 16), 8192),
    ("read 8 past zone 1's write pointer", read16(ZONE + 64, 8), 4096),
    ("open zone 2", zone_out(3, 2 * ZONE), 0),
    ("close zone 2 (empty)", zone_out(1, 2 * ZONE), 0),
    ("write 8 at zone 2's start", write16(2 * ZONE, 8), data("D", 8)),
    ("close zone 2", zone_out(1, 2 * ZONE), 0),
    ("finish zone 3", zone_out(2, 3 * ZONE), 0),
    ("write 8 to zone 3 (full)", write16(3 * ZONE, 8), data("E", 8)),
    ("write 16 across zone 4's end", write16(5 * ZONE - 8, 16), data("F", 16)),
    ("write 8 in conventional zone 0", write16(100, 8), data("G", 8)),
    ("report zones, empty ones", report_zones(0, 4096, 0x01), 4096),
    ("report zones, closed ones", report_zones(0, 4096, 0x04), 4096),
    ("reset zone 1", zone_out(4, ZONE), 0),
    ("write 8 at zone 1's write pointer after reset", write16(ZONE, 8), data("H", 8)),
    ("open zone 5, then a 1 MiB write at its write pointer", write16(5 * ZONE, 2048), data("I", 2048)),
    ("write 8 at zone 5's old start (unaligned)", write16(5 * ZONE, 8), data("J", 8)),
    ("reset all zones", zone_out(4, 0, all_zones=True), 0),
    ("report zones, all, after reset", report_zones(0, 4096), 4096),
]

SEQUENCES = {"tape": TAPE, "zbc": ZBC}


def sense_fields(hexsense):
    s = bytes.fromhex(hexsense)
    if len(s) < 14 or (s[0] & 0x7F) not in (0x70, 0x71):
        return {"sense": hexsense}
    info = int.from_bytes(s[3:7], "big", signed=True) if s[0] & 0x80 else None
    return {
        "key": s[2] & 0xF,
        "asc": s[12],
        "ascq": s[13],
        "fm": bool(s[2] & 0x80),
        "eom": bool(s[2] & 0x40),
        "ili": bool(s[2] & 0x20),
        "info": info,
    }


def position(dev):
    r, data = sgio(dev, cdb(0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0), 20, timeout_ms=600000)
    if r["status"] != 0:
        return None
    return {
        "bop": bool(data[0] & 0x80),
        "eop": bool(data[0] & 0x40),
        "first": int.from_bytes(data[4:8], "big"),
        "last": int.from_bytes(data[8:12], "big"),
    }


def zones(dev, n=6):
    """Type, condition and write pointer of the first n zones."""
    r, data = sgio(dev, report_zones(0, 64 + 64 * n), 64 + 64 * n)
    if r["status"] != 0:
        return None
    out = []
    for i in range(n):
        d = data[64 + 64 * i:128 + 64 * i]
        out.append([d[0] & 0xF, d[1] >> 4, int.from_bytes(d[24:32], "big")])
    return out


def run(kind, dev):
    steps = SEQUENCES[kind]
    state = position if kind == "tape" else zones
    # Clear the unit attentions a new device (and a new LUN) raises.
    for _ in range(10):
        r, _ = sgio(dev, cdb(0, 0, 0, 0, 0, 0))
        if r["status"] == 0:
            break
    for i, (name, c, data) in enumerate(steps):
        if isinstance(data, bytes):
            r, got = sgio(dev, c, 0, data, timeout_ms=600000)
        else:
            r, got = sgio(dev, c, data, None, timeout_ms=600000)
        rec = {"step": i, "name": name, "status": r["status"], "resid": r["resid"]}
        # Driver status 8 (DRIVER_SENSE) only says sense came back.
        if r["host_status"] or r["driver_status"] & 0xF not in (0, 8):
            rec["transport"] = [r["host_status"], r["driver_status"]]
        if r["status"] == 2:
            rec.update(sense_fields(r["sense"]))
        if data and not isinstance(data, bytes):
            moved = max(0, data - max(r["resid"], 0))
            if c[0] == 0x08 and kind == "tape":
                # The name of each block read: its first 4 bytes.
                size = 512 if c[1] & 1 else data
                rec["data"] = [got[o:o + 4].hex() for o in range(0, moved, size)]
            elif c[0] == 0x95:
                # Zone reports: the zone count and a digest.
                rec["data"] = [int.from_bytes(got[0:4], "big") // 64,
                               __import__("hashlib").sha256(got[:moved]).hexdigest()[:16]]
            elif moved > 64:
                rec["data"] = __import__("hashlib").sha256(got[:moved]).hexdigest()[:16]
            else:
                rec["data"] = got[:moved].hex()
        rec["state"] = state(dev)
        print(json.dumps(rec), flush=True)


def compare(a, b):
    ta = [json.loads(line) for line in open(a)]
    tb = [json.loads(line) for line in open(b)]
    diffs = 0
    for x, y in zip(ta, tb):
        keys = sorted(set(x) | set(y))
        d = {k: (x.get(k), y.get(k)) for k in keys if x.get(k) != y.get(k)}
        if d:
            diffs += 1
            print(f"step {x['step']} ({x['name']}): " +
                  ", ".join(f"{k} {v[0]!r} / {v[1]!r}" for k, v in d.items()))
    if len(ta) != len(tb):
        diffs += 1
        print(f"lengths differ: {len(ta)} / {len(tb)} steps")
    return 1 if diffs else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "run" and sys.argv[2] in SEQUENCES:
        run(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
