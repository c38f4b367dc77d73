//! Backups sealed under a key file (`backup --encrypt-key-file`): the
//! whole plain backup (its own checksum included) encrypted with
//! ChaCha20-Poly1305 in chunks, under a key derived for this file alone.
//!
//! Layout: `GHBACKUP`, format 2, the key's id (8 bytes: which key, never
//! the key), a random 32-byte salt, then chunks of 64 KiB of plaintext,
//! each sealed with its tag. The file's key is HKDF-SHA256(key file, salt);
//! chunk `n`'s nonce is `n` and whether it is the last, so chunks cannot be
//! reordered, dropped, or the file cut at a chunk boundary unnoticed.
//! The key file holds 32 random bytes as 64 hex digits and never goes into
//! a backup.

use std::io::{Read, Write};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::backup::MAGIC;
use crate::StorageError;

/// The format byte of a sealed backup (a plain one is 1).
pub const SEALED: u8 = 2;
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

fn bad(reason: impl ToString) -> StorageError {
    StorageError::Corrupt { table: "backup", reason: reason.to_string() }
}

/// A backup key: 32 bytes, read from a file of 64 hex digits.
pub struct BackupKey([u8; 32]);

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({})", hex_id(&self.id()))
    }
}

fn hex_id(id: &[u8; 8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl BackupKey {
    /// A new random key, as the key file holds it.
    pub fn generate() -> (BackupKey, String) {
        let mut k = [0u8; 32];
        SystemRandom::new().fill(&mut k).expect("the system's random source");
        let text = k.iter().map(|b| format!("{b:02x}")).collect();
        (BackupKey(k), text)
    }

    pub fn from_file(path: &Path) -> Result<BackupKey, StorageError> {
        let text = std::fs::read_to_string(path)?;
        Self::parse(text.trim())
            .ok_or_else(|| bad(format!("{} must hold a key of 64 hex digits (32 bytes)", path.display())))
    }

    fn parse(text: &str) -> Option<BackupKey> {
        if text.len() != 64 {
            return None;
        }
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(BackupKey(k))
    }

    /// Which key this is, without revealing it.
    pub fn id(&self) -> [u8; 8] {
        let d = Sha256::new().chain_update(b"gatehouse backup key id\0").chain_update(self.0).finalize();
        d[..8].try_into().expect("8 of 32 bytes")
    }

    fn file_key(&self, salt: &[u8; 32]) -> LessSafeKey {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(&self.0);
        let okm = prk.expand(&[b"gatehouse backup v1"], &CHACHA20_POLY1305).expect("a 32-byte key");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

fn nonce(n: u64, last: bool) -> Nonce {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8] = u8::from(last);
    Nonce::assume_unique_for_key(b)
}

/// Seals what is written to it; [`Sealing::finish`] seals the last chunk.
pub struct Sealing<W: Write> {
    out: W,
    key: LessSafeKey,
    n: u64,
    buf: Vec<u8>,
}

impl<W: Write> Sealing<W> {
    pub fn new(mut out: W, key: &BackupKey) -> Result<Self, StorageError> {
        let mut salt = [0u8; 32];
        SystemRandom::new().fill(&mut salt).map_err(|_| bad("no random source"))?;
        out.write_all(MAGIC)?;
        out.write_all(&[SEALED])?;
        out.write_all(&key.id())?;
        out.write_all(&salt)?;
        Ok(Sealing { out, key: key.file_key(&salt), n: 0, buf: Vec::with_capacity(CHUNK + TAG) })
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        let take = self.buf.len().min(CHUNK);
        let mut chunk: Vec<u8> = self.buf.drain(..take).collect();
        self.key
            .seal_in_place_append_tag(nonce(self.n, last), Aad::empty(), &mut chunk)
            .map_err(|_| std::io::Error::other("sealing failed"))?;
        self.n += 1;
        self.out.write_all(&chunk)
    }

    /// Seals what is left as the last chunk and returns the output.
    pub fn finish(mut self) -> Result<W, StorageError> {
        while self.buf.len() > CHUNK {
            self.seal(false)?;
        }
        self.seal(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        // Keep a full chunk back: the last one is sealed as last.
        while self.buf.len() > CHUNK {
            self.seal(false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Opens a sealed backup as the plain one it holds.
pub struct Opening<R: Read> {
    input: R,
    key: LessSafeKey,
    n: u64,
    plain: Vec<u8>,
    at: usize,
    done: bool,
    /// One byte read ahead, to know whether a full chunk is the last.
    ahead: Option<u8>,
}

impl<R: Read> Opening<R> {
    /// After the magic and the format byte (already read).
    fn after_format(mut input: R, key: &BackupKey) -> Result<Self, StorageError> {
        let mut id = [0u8; 8];
        let mut salt = [0u8; 32];
        input.read_exact(&mut id).map_err(|_| bad("truncated: no key id"))?;
        input.read_exact(&mut salt).map_err(|_| bad("truncated: no salt"))?;
        if id != key.id() {
            return Err(bad(format!(
                "the backup was sealed with another key (key id {}, this key is {})",
                hex_id(&id),
                hex_id(&key.id())
            )));
        }
        Ok(Opening { input, key: key.file_key(&salt), n: 0, plain: Vec::new(), at: 0, done: false, ahead: None })
    }

    fn next_chunk(&mut self) -> std::io::Result<()> {
        let mut sealed = Vec::with_capacity(CHUNK + TAG + 1);
        sealed.extend(self.ahead.take());
        let mut limited = (&mut self.input).take((CHUNK + TAG + 1 - sealed.len()) as u64);
        limited.read_to_end(&mut sealed)?;
        let last = sealed.len() <= CHUNK + TAG;
        if !last {
            self.ahead = sealed.pop();
        }
        let plain = self.key.open_in_place(nonce(self.n, last), Aad::empty(), &mut sealed).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a sealed chunk does not open: the file was changed, cut, or sealed with another key",
            )
        })?;
        self.plain = plain.to_vec();
        self.at = 0;
        self.n += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for Opening<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A backup file as the plain backup it holds: read as is, or opened with
/// `key` when sealed. Refuses a sealed one without a key, and a key for a
/// plain one (a mistake worth saying).
pub fn open_backup<'a>(mut file: impl Read + 'a, key: Option<&BackupKey>) -> Result<Box<dyn Read + 'a>, StorageError> {
    let mut head = [0u8; 9];
    file.read_exact(&mut head).map_err(|_| bad("too short to be a backup file"))?;
    if &head[..8] != MAGIC {
        return Err(bad("not a Gatehouse backup file"));
    }
    match (head[8], key) {
        (SEALED, Some(key)) => Ok(Box::new(Opening::after_format(file, key)?)),
        (SEALED, None) => Err(bad("this backup is sealed: give the key file it was sealed with")),
        (crate::backup::FORMAT, None) => Ok(Box::new(std::io::Cursor::new(head).chain(file))),
        (crate::backup::FORMAT, Some(_)) => Err(bad("this backup is not sealed: restore it without a key file")),
        (other, _) => Err(bad(format!("backup format {other} is not one this version reads"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(plain: &[u8], key: &BackupKey) -> Vec<u8> {
        let mut s = Sealing::new(Vec::new(), key).unwrap();
        // In uneven pieces, as a writer would.
        for piece in plain.chunks(7_777) {
            s.write_all(piece).unwrap();
        }
        s.finish().unwrap()
    }

    fn open(sealed: &[u8], key: &BackupKey) -> Result<Vec<u8>, String> {
        let mut r = open_backup(sealed, Some(key)).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn sealed_backups_open_with_their_key_only_and_refuse_every_change() {
        let (key, text) = BackupKey::generate();
        assert_eq!(BackupKey::parse(&text).unwrap().id(), key.id());
        let (other, _) = BackupKey::generate();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&plain, &key);
            assert_eq!(open(&sealed, &key).unwrap(), plain, "{len} bytes");
            assert!(!sealed.windows(32).any(|w| w == key.0), "the key is not in the file");
            assert!(open(&sealed, &other).unwrap_err().contains("another key"));
            // Cut anywhere after the header, or a byte changed: refused.
            for cut in [49, sealed.len() / 2, sealed.len() - 1] {
                if cut < sealed.len() && cut >= 49 {
                    assert!(open(&sealed[..cut], &key).is_err(), "{len} bytes cut at {cut}");
                }
            }
            let mut flipped = sealed.clone();
            let i = 49 + (sealed.len() - 49) / 2;
            flipped[i] ^= 1;
            assert!(open(&flipped, &key).is_err(), "{len} bytes, byte {i} flipped");
        }
        // Cut exactly at a chunk boundary: the last chunk is missing.
        let plain = vec![7u8; 2 * CHUNK + 10];
        let sealed = seal(&plain, &key);
        assert!(open(&sealed[..49 + CHUNK + TAG], &key).is_err());
        // A plain backup with a key, a sealed one without.
        assert!(open_backup(&b"GHBACKUP\x01rest"[..], Some(&key)).is_err());
        assert!(open_backup(&sealed[..], None).is_err());
        assert!(BackupKey::parse("zz").is_none() && BackupKey::parse(&"g".repeat(64)).is_none());
    }
}
