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
    gen_vsock()
    gen_mmio()
    gen_api()
