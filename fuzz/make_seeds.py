#!/usr/bin/env python3
"""Writes the seed corpora of the virtio targets (fuzz/corpus/virtio_*/) and api_body's.

Each seed is a valid input in the layout its target's doc comment describes (queues as
common/virtq.rs's write_queue reads them); run it again after changing a layout.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = 0x1_0000
NEXT, WRITE, INDIRECT = 1, 2, 4


def desc(offset, length, flags=0, nxt=0):
    """A descriptor whose address is `offset` into the data area."""
    return struct.pack("<BHHB", flags << 2, offset, length, nxt)


def queue(size_log, descs, heads, used_event=None):
    """A queue of 1 << size_log entries; with `used_event`, VIRTIO_RING_F_EVENT_IDX."""
    if used_event is None:
        out = bytes([size_log])
    else:
        out = bytes([0x80 | size_log]) + struct.pack("<H", used_event)
    out += bytes([len(descs)]) + b"".join(descs)
    return out + bytes([len(heads)]) + bytes(heads)


def data(chunks, length):
    """The data area: `chunks` maps offsets to bytes."""
    area = bytearray(length)
    for offset, blob in chunks.items():
        area[offset:offset + len(blob)] = blob
    return bytes(area)


def blk_header(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def raw_desc(addr, length, flags=0, nxt=0):
    """A descriptor as it sits in guest memory (for indirect tables)."""
    return struct.pack("<QIHH", addr, length, flags, nxt)


def write(target, name, blob):
    path = os.path.join(HERE, "corpus", target, name)
    with open(path, "wb") as f:
        f.write(blob)


def blk_requests(used_event=None):
    """IN, OUT, FLUSH and GET_ID, one chain each."""
    q = queue(4, [
        desc(0x00, 16, NEXT, 1), desc(0x200, 512, WRITE | NEXT, 2), desc(0x1000, 1, WRITE),
        desc(0x20, 16, NEXT, 4), desc(0x400, 512, NEXT, 5), desc(0x1001, 1, WRITE),
        desc(0x40, 16, NEXT, 7), desc(0x1002, 1, WRITE),
        desc(0x60, 16, NEXT, 9), desc(0x1100, 21, WRITE),
    ], [0, 3, 6, 8], used_event)
    area = data({0x00: blk_header(0, 1), 0x20: blk_header(1, 2), 0x40: blk_header(4, 0),
                 0x60: blk_header(8, 0), 0x400: b"\xab" * 512}, 0x1200)
    return q, area


def blk_indirect():
    """An IN request in an indirect table, header split across two descriptors."""
    table = (raw_desc(DATA + 0x00, 10, NEXT, 1) + raw_desc(DATA + 0x0a, 6, NEXT, 2)
             + raw_desc(DATA + 0x200, 1025, WRITE))
    q = queue(4, [desc(0x2000, len(table), INDIRECT)], [0])
    return q, data({0x00: blk_header(0, 3), 0x2000: table}, 0x2100)


def gen_blk():
    q, area = blk_requests()
    write("virtio_blk", "requests", bytes([0, 16]) + q + area)
    write("virtio_blk", "read_only", bytes([1, 16]) + q + area)
    q, area = blk_indirect()
    write("virtio_blk", "indirect", bytes([0, 8]) + q + area)
    q, area = blk_requests(used_event=1)
    write("virtio_blk", "event_idx", bytes([0, 16]) + q + area)


def net_queues():
    rx = queue(4, [desc(0x0, 2048, WRITE), desc(0x1000, 12, WRITE | NEXT, 2),
                   desc(0x1100, 1514, WRITE)], [0, 1])
    tx = queue(4, [desc(0x2000, 12, NEXT, 1), desc(0x2100, 60)], [0])
    return rx, tx


def gen_net():
    rx, tx = net_queues()
    frames = bytes([2]) + struct.pack("<II", 60, 1526)
    # Notifications: RX, TX, host event, RX.
    order = 0 | 1 << 2 | 2 << 4 | 0 << 6
    area = data({0x2000: bytes(12), 0x2100: b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00"}, 0x2200)
    write("virtio_net", "rx_tx", bytes([1]) + frames + rx + tx + bytes([order]) + area)
    table = raw_desc(DATA + 0x2000, 12, NEXT, 1) + raw_desc(DATA + 0x2100, 60)
    tx = queue(4, [desc(0x3000, len(table), INDIRECT)], [0])
    area = data({0x3000: table, 0x2100: b"\x01" * 60}, 0x3100)
    write("virtio_net", "tx_indirect", bytes([0, 0]) + rx + tx + bytes([1 << 2]) + area)


def vsock_header(length, op, src_port=1234, dst_port=5678):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, 1, op, 0, 65536, 0)


def gen_vsock():
    q = queue(4, [desc(0x0, 44, NEXT, 1), desc(0x100, 5),
                  desc(0x1000, 44, WRITE | NEXT, 3), desc(0x1100, 100, WRITE),
                  desc(0x200, 49)], [0, 2, 4])
    area = data({0x0: vsock_header(5, 5), 0x100: b"hello",
                 0x200: vsock_header(5, 1) + b"world"}, 0x300)
    rx = vsock_header(50, 5, 5678, 1234) + struct.pack("<I", 50)
    write("virtio_vsock", "tx_rx", q + struct.pack("<I", 0b010) + rx + area)
    table = raw_desc(DATA + 0x0, 20, NEXT, 1) + raw_desc(DATA + 0x14, 24 + 5)
    q = queue(4, [desc(0x2000, len(table), INDIRECT)], [0])
    area = data({0x0: vsock_header(5, 5) + b"split", 0x2000: table}, 0x2100)
    write("virtio_vsock", "indirect", q + struct.pack("<I", 0) + bytes(48) + area)


# virtio_mmio operations.
def w(reg_index, value, width=0):
    return bytes([0 | width << 3, reg_index]) + struct.pack("<I", value)


def r(reg_index, width=0):
    return bytes([1 | width << 3, reg_index])


NOTIFY = lambda q: bytes([2 | q << 5])
START = bytes([3])
SNAPSHOT = bytes([4])
STATUS = 15  # index of 0x70 in REGISTERS


def ops(*items):
    return bytes([len(items)]) + b"".join(items)


def gen_mmio():
    rng_q = queue(4, [desc(0x0, 64, WRITE), desc(0x100, 4096, WRITE)], [0, 1])
    area = data({}, 0x200)
    seq = ops(START, NOTIFY(0), r(STATUS), r(0), r(0x80 + 0, 1), SNAPSHOT, NOTIFY(0),
              w(STATUS, 0))
    write("virtio_mmio", "rng", bytes([0]) + rng_q + seq + area)
    q, area = blk_requests()
    seq = ops(START, NOTIFY(0), r(0x80, 3), r(0x80 + 20), SNAPSHOT, w(12, 0), NOTIFY(0))
    write("virtio_mmio", "block", bytes([1]) + q + seq + area)
    # The start sequence by hand: status, features, queue 0 at 0/0x1000/0x2000, ready.
    by_hand = ops(w(STATUS, 1), w(STATUS, 3), w(5, 1), r(4), w(7, 1), w(6, 1), w(STATUS, 11),
                  w(8, 0), w(10, 16), w(16, 0), w(18, 0x1000), w(20, 0x2000), w(11, 1),
                  w(STATUS, 15), NOTIFY(0), r(13), w(14, 1))
    write("virtio_mmio", "block_by_hand", bytes([1]) + q + by_hand + area)
    rx, tx = net_queues()
    area = data({0x2000: bytes(12), 0x2100: b"\xff" * 14}, 0x2200)
    seq = ops(START, NOTIFY(1), NOTIFY(0), r(0x80, 3), SNAPSHOT, NOTIFY(0))
    write("virtio_mmio", "net", bytes([2]) + rx + tx + seq + area)


# virtio_net_mq: control commands and their chains.
CTRL_MQ, PAIRS_SET = 4, 0
CTRL_AT = 0x0  # commands, data and status bytes at the start of the data area


def desc_abs(addr, length, flags=0, nxt=0):
    """A descriptor with a raw 64-bit address (anywhere, outside memory too)."""
    return struct.pack("<BQHB", 3 | flags << 2, addr, length, nxt)


def pairs_set(n):
    return struct.pack("<BBH", CTRL_MQ, PAIRS_SET, n)


def mq_pair_queue(q):
    """Queue q of the pairs: an RX queue (a 2 KiB buffer, a split one) or a TX queue
    (header + frame), each pair's buffers apart."""
    k = q // 2
    if q % 2 == 0:
        return queue(4, [desc(0x4000 + k * 0x1000, 2048, WRITE),
                         desc(0x4800 + k * 0x1000, 12, WRITE | NEXT, 2),
                         desc(0x4900 + k * 0x1000, 1514, WRITE)], [0, 1])
    return queue(4, [desc(0x800 + k * 0x100, 12, NEXT, 1), desc(0x880 + k * 0x100, 60)], [0])


def mq_tx_frames(pairs):
    return {0x880 + k * 0x100: b"\xff" * 6 + bytes([2, 0, 0, 0, 0, k]) + b"\x08\x00"
            for k in range(pairs)}


def op(kind, arg=0):
    return bytes([kind | arg << 3])


def mq_seed(setup, feats, pairs, ctrl, ops_, args=b"", chunks=None, ctrl_at=None):
    """A virtio_net_mq input: `ctrl` is the control queue's description, written where
    the driver puts it (`ctrl_at`, default after the pairs); other queues are the pairs'."""
    frames = b"".join(bytes([2]) + struct.pack("<II", 60, 1526) for _ in range(pairs))
    nqueues = 2 * pairs + 1
    ctrl_at = 2 * pairs if ctrl_at is None else ctrl_at
    descs = [ctrl if q == ctrl_at else mq_pair_queue(q) if q < 2 * pairs else queue(0, [], [])
             for q in range(nqueues)]
    ops_ = b"".join(ops_)
    args = args.ljust(4 * len(ops_), b"\0")
    area = dict(mq_tx_frames(pairs))
    area.update(chunks or {})
    return (bytes([setup, feats]) + frames + b"".join(descs) + bytes([len(ops_)]) + ops_
            + args + data(area, max(at + len(blob) for at, blob in area.items())))


F_CTRL, F_MQ, F_MRG = 1, 2, 4


def gen_net_mq():
    c = CTRL_AT
    # VQ_PAIRS_SET 2 as header + data + status, traffic on both pairs; then (after the
    # guest rewrites the count to 1 and makes the chain available again) the same chain
    # says 1; a snapshot, a reset and a restart.
    ctrl = queue(4, [desc(c, 2, NEXT, 1), desc(c + 0x10, 2, NEXT, 2), desc(c + 0x20, 1, WRITE),
                     desc(c + 0x40, 4, NEXT, 4), desc(c + 0x50, 1, WRITE)], [0])
    chunks = {c: pairs_set(2)[:2], c + 0x10: struct.pack("<H", 2), c + 0x40: pairs_set(1)}
    traffic = [op(0, 3), op(0, 2), op(1, 3), op(1, 0), op(0, 1), op(0, 0)]
    write("virtio_net_mq", "pairs_set", mq_seed(
        0, F_CTRL | F_MQ | F_MRG, 2, ctrl,
        [op(2)] + traffic + [op(4), op(3, 4), op(2), op(0, 2), op(1, 3), op(7), op(5), op(6)],
        args=struct.pack("<HI", c + 0x10, 1) + bytes([1, F_CTRL | F_MQ]), chunks=chunks))
    # Four pairs: 4, traffic on pair 3, then 3 (the guest rewrites the command; pair 3's
    # queues go quiet), traffic on pair 3 again, a snapshot.
    ctrl = queue(4, [desc(c, 4, NEXT, 1), desc(c + 0x10, 1, WRITE)], [0])
    write("virtio_net_mq", "four_pairs", mq_seed(
        2, F_CTRL | F_MQ, 4, ctrl,
        [op(2), op(0, 7), op(0, 6), op(1, 5), op(4), op(3, 8), op(2), op(0, 7), op(0, 6),
         op(1, 5), op(7), op(0, 6), op(1, 4), op(0, 8)],
        args=struct.pack("<HIB", c + 2, 3, 1), chunks={c: pairs_set(4)}))
    # Wrong classes and commands: RX mode (0), MAC (1), MQ's RSS (4/1), VQ_PAIRS_SET with
    # 0, 9 and 0xffff pairs, with 3 data bytes.
    cmds = [bytes([0, 0, 1]), bytes([1, 1]) + bytes(6), bytes([4, 1]) + bytes(8), pairs_set(0),
            pairs_set(9), pairs_set(0xFFFF), pairs_set(2) + b"\0"]
    descs, heads, chunks = [], [], {}
    for i, cmd in enumerate(cmds):
        at = c + 0x40 * i
        heads.append(len(descs))
        descs += [desc(at, len(cmd), NEXT, len(descs) + 1), desc(at + 0x30, 1, WRITE)]
        chunks[at] = cmd
    ctrl = queue(4, descs, heads)
    write("virtio_net_mq", "wrong_class", mq_seed(
        1, F_CTRL | F_MQ, 3, ctrl, [op(2), op(0, 5), op(1, 4), op(2)], chunks=chunks))
    # Short and long chains: a 1-byte command, a 100-byte one (over the 64 the device
    # reads), no status byte, a readable buffer after the status, a zero-length status,
    # a status outside guest memory, a descriptor loop.
    descs = [
        desc(c, 1, NEXT, 1), desc(c + 0x30, 1, WRITE),                       # 0
        desc(c + 0x100, 100, NEXT, 3), desc(c + 0x1f0, 1, WRITE),            # 2
        desc(c + 0x200, 4),                                                  # 4
        desc(c + 0x240, 2, NEXT, 6), desc(c + 0x270, 1, WRITE | NEXT, 7),    # 5
        desc(c + 0x250, 2),                                                  # 7
        desc(c + 0x280, 4, NEXT, 9), desc(c + 0x2b0, 0, WRITE),              # 8
        desc(c + 0x2c0, 4, NEXT, 11), desc_abs(0x1_0000_0000, 1, WRITE),     # 10
        desc(c + 0x300, 4, NEXT, 13), desc(c + 0x310, 1, WRITE | NEXT, 12),  # 12 (loop)
    ]
    chunks = {c: b"\x04", c + 0x100: pairs_set(2) + bytes(96), c + 0x200: pairs_set(2),
              c + 0x240: pairs_set(2)[:2], c + 0x250: pairs_set(2)[2:],
              c + 0x280: pairs_set(2), c + 0x2c0: pairs_set(2), c + 0x300: pairs_set(2)}
    ctrl = queue(5, descs, [0, 2, 4, 5, 8, 10, 12])
    write("virtio_net_mq", "short_long", mq_seed(
        0, F_CTRL | F_MQ | F_MRG, 2, ctrl, [op(2), op(0, 4), op(0, 9), op(0, 30)],
        chunks=chunks))
    # The header in a device-writable descriptor (alone, and before a readable one).
    descs = [desc(c, 4, WRITE | NEXT, 1), desc(c + 0x30, 1, WRITE),
             desc(c + 0x40, 2, WRITE | NEXT, 3), desc(c + 0x50, 2, NEXT, 4),
             desc(c + 0x60, 1, WRITE)]
    chunks = {c: pairs_set(2), c + 0x40: pairs_set(2)[:2], c + 0x50: pairs_set(2)[2:]}
    write("virtio_net_mq", "write_only_header", mq_seed(
        0, F_CTRL | F_MQ, 2, queue(4, descs, [0, 2]), [op(2), op(0, 3), op(1, 3)],
        chunks=chunks))
    # Control queue without MQ: it sits at index 2; VQ_PAIRS_SET is refused.
    ctrl = queue(4, [desc(c, 4, NEXT, 1), desc(c + 0x10, 1, WRITE)], [0])
    write("virtio_net_mq", "ctrl_without_mq", mq_seed(
        0, F_CTRL, 2, ctrl, [op(2), op(0, 2), op(0, 4), op(1, 3)], chunks={c: pairs_set(2)},
        ctrl_at=2))
    # Three pairs, the command in an indirect table; the tap refuses TUNSETQUEUE; then a
    # restart with a restored state (2 of 3 pairs) and the same features.
    table = raw_desc(DATA + c, 4, NEXT, 1) + raw_desc(DATA + c + 0x10, 1, WRITE)
    ctrl = queue(4, [desc(c + 0x100, len(table), INDIRECT)], [0])
    chunks = {c: pairs_set(3), c + 0x100: table}
    write("virtio_net_mq", "indirect_refused", mq_seed(
        1 | 8, F_CTRL | F_MQ, 3, ctrl, [op(2), op(0, 5), op(6, 1), op(0, 3), op(1, 4)],
        args=bytes([3, 2, F_CTRL | F_MQ]), chunks=chunks))
    write("virtio_net_mq", "indirect", mq_seed(
        1, F_CTRL | F_MQ, 3, ctrl, [op(2), op(0, 5), op(6, 1), op(0, 3), op(1, 4), op(2)],
        args=bytes([3, 2, F_CTRL | F_MQ | F_MRG]), chunks=chunks))


API_BODIES = {
    "vm": b'{"state":"Paused"}',
    "boot_source": b'{"kernel_image_path":"/k","boot_args":"console=ttyS0","initrd_path":"/i"}',
    "machine_config": b'{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true}',
    "machine_config_patch": b'{"mem_size_mib":512}',
    "drive": b'{"drive_id":"root","path_on_host":"/r","is_root_device":true,"is_read_only":true,'
             b'"rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}}',
    "drive_patch": b'{"drive_id":"root","path_on_host":"/s"}',
    "net": b'{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}',
    "net_patch": b'{"iface_id":"eth0","rx_rate_limiter":{"ops":{"size":100,"refill_time":1000}}}',
    "vsock": b'{"guest_cid":3,"uds_path":"/v.sock"}',
    "entropy": b'{}',
    "logger": b'{"level":"Info","log_path":"/l"}',
    "metrics": b'{"metrics_path":"/m"}',
    "action": b'{"action_type":"Shutdown","timeout_ms":500}',
    "snapshot_create": b'{"snapshot_type":"Diff","snapshot_path":"/s","mem_file_path":"/m"}',
    "snapshot_load": b'{"snapshot_path":"/s","mem_backend":{"backend_type":"File",'
                     b'"backend_path":"/m"},"resume_vm":true}',
}


def gen_api():
    for name, body in API_BODIES.items():
        write("api_body", name, body)


if __name__ == "__main__":
    gen_blk()
    gen_net()
    gen_net_mq()
    gen_vsock()
    gen_mmio()
    gen_api()
