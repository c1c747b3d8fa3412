//! A tiny hand-assembled guest for tests that drive the real `zvm` binary, and helpers
//! to watch its output.
#![allow(dead_code)]

pub mod cli;

use std::io::Read;
use std::sync::{Arc, Mutex};

/// The count starts here, so a vCPU restored with zeroed registers shows at once.
pub const BASE: u64 = 0x5a5a_0000_0000;

/// The guest, 64-bit code entered with identity paging (an ELF without a PVH note):
///
/// ```text
/// mov rbx, 0x5008 ; inc qword [rbx]           ; boots += 1
/// mov dx, 0x3f8 ; mov al, 'B' ; out dx, al ; mov al, 10 ; out dx, al   ; "B\n" once
/// mov rax, BASE
/// loop: inc rax ; mov [0x5000], rax           ; the count lives in rax
///       test eax, 0x3fff ; jnz loop
///       mov r8, rax ; mov al, '.' ; out dx, al ; mov rax, r8 ; jmp loop   ; a dot now and then
/// ```
pub fn guest_code() -> Vec<u8> {
    let mut code = vec![0x48, 0xc7, 0xc3, 0x08, 0x50, 0x00, 0x00, 0x48, 0xff, 0x03];
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xb0, b'B', 0xee, 0xb0, b'\n', 0xee]);
    code.extend_from_slice(&[0x48, 0xb8]);
    code.extend_from_slice(&BASE.to_le_bytes());
    let top = code.len();
    code.extend_from_slice(&[
        0x48, 0xff, 0xc0, 0x48, 0x89, 0x04, 0x25, 0x00, 0x50, 0x00, 0x00,
    ]);
    code.extend_from_slice(&[0xa9, 0xff, 0x3f, 0x00, 0x00]);
    let jnz = code.len();
    code.extend_from_slice(&[0x75, 0x00]);
    code.extend_from_slice(&[0x49, 0x89, 0xc0, 0xb0, b'.', 0xee, 0x4c, 0x89, 0xc0]);
    let jmp = code.len();
    code.extend_from_slice(&[0xeb, 0x00]);
    code[jnz + 1] = (top as i64 - (jnz as i64 + 2)) as u8;
    code[jmp + 1] = (top as i64 - (jmp as i64 + 2)) as u8;
    code
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at 0x10_0000, entry there, no notes.
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const ENTRY: u64 = 0x10_0000;
    const CODE_OFFSET: usize = 0x1000;
    let mut elf = b"\x7fELF".to_vec();
    elf.extend_from_slice(&[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // 64-bit, LE, v1, SysV
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&(CODE_OFFSET as u64).to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.resize(CODE_OFFSET, 0);
    elf.extend_from_slice(code);
    elf
}

/// Why this host cannot run the test, if it cannot.
pub fn no_kvm() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened: {e}")),
    }
}

pub fn shared_reader(mut from: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let text = Arc::new(Mutex::new(Vec::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("output").extend_from_slice(&buf[..n]);
        }
    });
    text
}
