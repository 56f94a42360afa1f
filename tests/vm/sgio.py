#!/usr/bin/env python3
"""Issue one SCSI command with SG_IO and print exactly what came back.

Used by the VM tests to compare, byte for byte, what an initiator sees
through a tcmu-sg LUN with what the backing device returns directly.

  sgio.py run DEV CDB_HEX [--in N] [--out FILE] [--save FILE] [--timeout MS]
      prints one JSON object: status, host_status, driver_status, resid,
      sense (hex, the sense's own length), data_sha256
  sgio.py same DEV_A DEV_B CDB_HEX [--in N] [--out FILE] [--status S] [--key K] [--data]
      runs the command on both; exit 0 if status and sense (and, on GOOD,
      or whatever the status with --data, the data read and the residual)
      are identical and, when given, the status is S and the sense key K
"""
import ctypes
import fcntl
import hashlib
import json
import os
import sys

SG_IO = 0x2285
SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV = -1, -2, -3


class SgIoHdr(ctypes.Structure):
    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


assert ctypes.sizeof(SgIoHdr) == 88


def sense_len(s):
    if len(s) >= 8 and (s[0] & 0x7F) in (0x70, 0x71, 0x72, 0x73):
        return min(8 + s[7], len(s))
    return len(s)


def sense_key(hexsense):
    s = bytes.fromhex(hexsense)
    if len(s) >= 3 and (s[0] & 0x7F) in (0x70, 0x71):
        return s[2] & 0xF
    if len(s) >= 2 and (s[0] & 0x7F) in (0x72, 0x73):
        return s[1] & 0xF
    return None


def sgio(dev, cdb, data_in=0, data_out=None, timeout_ms=30000):
    cdb_buf = ctypes.create_string_buffer(bytes(cdb), len(cdb))
    sense = ctypes.create_string_buffer(96)
    h = SgIoHdr()
    h.interface_id = ord("S")
    h.cmd_len = len(cdb)
    h.mx_sb_len = 96
    h.cmdp = ctypes.addressof(cdb_buf)
    h.sbp = ctypes.addressof(sense)
    h.timeout = timeout_ms
    buf = None
    if data_out is not None:
        buf = ctypes.create_string_buffer(data_out, len(data_out))
        h.dxfer_direction = SG_DXFER_TO_DEV
        h.dxfer_len = len(data_out)
        h.dxferp = ctypes.addressof(buf)
    elif data_in:
        buf = ctypes.create_string_buffer(data_in)
        h.dxfer_direction = SG_DXFER_FROM_DEV
        h.dxfer_len = data_in
        h.dxferp = ctypes.addressof(buf)
    else:
        h.dxfer_direction = SG_DXFER_NONE
    fd = os.open(dev, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, SG_IO, h)
    finally:
        os.close(fd)
    raw = sense.raw[: h.sb_len_wr]
    meaningful = raw[: sense_len(raw)]
    out = {
        "status": h.status,
        "host_status": h.host_status,
        "driver_status": h.driver_status,
        "resid": h.resid,
        "sb_len_wr": h.sb_len_wr,
        "sense": meaningful.hex(),
        # Bytes past the sense's own length must be zero (LIO pads to 96).
        "sense_tail_zero": all(b == 0 for b in raw[len(meaningful):]),
    }
    if data_in and buf is not None:
        got = data_in - max(h.resid, 0)
        raw_data = buf.raw
        out["data_sha256"] = hashlib.sha256(raw_data[:got]).hexdigest()
        return out, raw_data
    return out, b""


def parse(argv):
    opts = {"in": 0, "out": None, "save": None, "status": None, "key": None, "data": False,
            "timeout": "30000"}
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--data":
            opts["data"] = True
            i += 1
        elif a in ("--in", "--out", "--save", "--status", "--key", "--timeout"):
            opts[a[2:]] = argv[i + 1]
            i += 2
        else:
            rest.append(a)
            i += 1
    opts["in"] = int(opts["in"])
    return rest, opts


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    rest, o = parse(argv)
    out_data = open(o["out"], "rb").read() if o["out"] else None
    if cmd == "run":
        dev, cdb = rest[0], bytes.fromhex(rest[1])
        r, data = sgio(dev, cdb, o["in"], out_data, int(o["timeout"]))
        if o["save"]:
            open(o["save"], "wb").write(data)
        print(json.dumps(r))
        return 0
    if cmd == "same":
        a, b, cdb = rest[0], rest[1], bytes.fromhex(rest[2])
        ra, _ = sgio(a, cdb, o["in"], out_data)
        rb, _ = sgio(b, cdb, o["in"], out_data)
        print(json.dumps({a: ra, b: rb}))
        keys = ("status", "sense")
        same = all(ra[k] == rb[k] for k in keys) and ra["sense_tail_zero"] and rb["sense_tail_zero"]
        # Data read with GOOD status must be the same bytes too.
        if ra["status"] == 0 and "data_sha256" in ra and ra.get("data_sha256") != rb.get("data_sha256"):
            same = False
        if o["data"] and (ra.get("data_sha256") != rb.get("data_sha256") or ra["resid"] != rb["resid"]):
            same = False
        if o["status"] is not None and ra["status"] != int(o["status"], 0):
            same = False
        if o["key"] is not None and sense_key(ra["sense"]) != int(o["key"], 0):
            same = False
        return 0 if same else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
