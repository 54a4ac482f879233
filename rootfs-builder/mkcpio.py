#!/usr/bin/env python3
"""Writes a newc ("070701") cpio archive from a list file, byte for byte
reproducibly: entries sorted by path, inode numbers in that order, uid/gid 0,
mtime 0. Device nodes are plain header entries, so no mknod (and no root) is
needed to build an image containing them.

Usage: mkcpio.py LIST OUT --file KEY=PATH [--file KEY=PATH ...]
"""

import argparse
import os
import stat
import sys

ALIGN = 4


def pad(length):
    return b"\0" * (-length % ALIGN)


def header(ino, mode, nlink, size, rdev_major, rdev_minor, name):
    fields = [
        ino, mode, 0, 0, nlink, 0, size,  # ino mode uid gid nlink mtime filesize
        0, 0, rdev_major, rdev_minor,      # devmajor devminor rdevmajor rdevminor
        len(name) + 1, 0,                  # namesize (with NUL) check
    ]
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{name}: header field {value} does not fit newc")
    raw = b"070701" + b"".join(b"%08X" % v for v in fields) + name.encode() + b"\0"
    return raw + pad(len(raw))


def parse_list(path, files):
    entries = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            where = f"{path}:{lineno}"
            kind, name = words[0], words[1].strip("/") if len(words) > 1 else ""
            if not name or name in entries:
                sys.exit(f"{where}: missing or duplicate path")
            mode = int(words[2], 8)
            if kind == "dir" and len(words) == 3:
                entries[name] = (stat.S_IFDIR | mode, 2, None, 0, 0)
            elif kind == "nod" and len(words) == 6 and words[3] in ("c", "b"):
                fmt = stat.S_IFCHR if words[3] == "c" else stat.S_IFBLK
                entries[name] = (fmt | mode, 1, None, int(words[4]), int(words[5]))
            elif kind == "file" and len(words) == 4:
                if words[3] not in files:
                    sys.exit(f"{where}: no --file given for {words[3]!r}")
                entries[name] = (stat.S_IFREG | mode, 1, files[words[3]], 0, 0)
            else:
                sys.exit(f"{where}: cannot parse {line.strip()!r}")
    # The kernel creates each entry as it reads it, so parents must come
    # first; sorting by path components does that and fixes the order.
    for name in entries:
        parent = os.path.dirname(name)
        if parent and parent not in entries:
            sys.exit(f"{path}: {name} has no entry for its parent {parent}")
    return sorted(entries.items(), key=lambda item: item[0].split("/"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("list")
    parser.add_argument("out")
    parser.add_argument("--file", action="append", default=[], metavar="KEY=PATH")
    args = parser.parse_args()
    files = dict(spec.split("=", 1) for spec in args.file)

    archive = bytearray()
    for ino, (name, (mode, nlink, source, major, minor)) in enumerate(
        parse_list(args.list, files), 1
    ):
        data = b""
        if source is not None:
            with open(source, "rb") as f:
                data = f.read()
        archive += header(ino, mode, nlink, len(data), major, minor, name)
        archive += data + pad(len(data))
    archive += header(0, 0, 1, 0, 0, 0, "TRAILER!!!")

    # Write beside the target and rename, so a reader never sees half an
    # image.
    tmp = f"{args.out}.tmp"
    with open(tmp, "wb") as f:
        f.write(archive)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
