//! TOTP codes from an independent implementation (Python's pyotp, from
//! Debian's `python3-pyotp`), never from Gatehouse's own code.

use std::process::Command;

/// Now, in unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The code of `secret` (base32) at unix time `at`.
pub fn pyotp(secret: &str, at: u64) -> String {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", "import pyotp, sys; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))", secret, &at.to_string()])
        .output()
        .expect("python3 with pyotp (scripts/deps.sh test installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The raw secret bytes of a base32 key (pyotp's decoding).
pub fn secret_bytes(secret: &str) -> Vec<u8> {
    let out = Command::new("/usr/bin/python3")
        .args(["-c", "import pyotp, sys; sys.stdout.write(pyotp.TOTP(sys.argv[1]).byte_secret().hex())", secret])
        .output()
        .unwrap();
    hex::decode(String::from_utf8(out.stdout).unwrap()).unwrap()
}
