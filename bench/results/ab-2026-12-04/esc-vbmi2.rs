// Scratch benchmark (session 14), not part of postern: an AVX-512 VBMI2
// JSON escaper checked and timed against postern's current one. To build
// it, put postern's escaper in front of this file (it is not copied here):
//
//   mkdir -p /tmp/esc/src && cd /tmp/esc
//   printf '[package]\nname = "esc"\nversion = "0.1.0"\nedition = "2021"\n[profile.release]\nlto = true\ncodegen-units = 1\n' > Cargo.toml
//   sed -n '/^fn escape(out: &mut Vec<u8>, b: &\[u8\], ascii: bool) -> usize {/,/^fn round/p' \
//     /work/main/src/recording.rs | sed '$d' > src/main.rs   # escape, needs_escape, next_special (e5f7762)
//   cat /work/main/bench/results/ab-2026-12-04/esc-vbmi2.rs >> src/main.rs
//   cargo build --release && ./target/release/esc

use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2")]
unsafe fn escape_v(out: &mut Vec<u8>, b: &[u8]) -> usize {
    // letters for short escapes, indexed by byte & 63
    let mut t = [0u8; 64];
    t[8] = b'b'; t[9] = b't'; t[10] = b'n'; t[12] = b'f'; t[13] = b'r'; t[34] = b'"'; t[28] = b'\\';
    let table = _mm512_loadu_si512(t.as_ptr() as *const _);
    let mut c = [0u8; 32];
    for k in [8usize, 9, 10, 12, 13] { c[k] = 1; }
    let cls = _mm256_loadu_si256(c.as_ptr() as *const _);
    let sp = _mm256_set1_epi8(0x20);
    let q = _mm256_set1_epi8(b'"' as i8);
    let bsv = _mm256_set1_epi8(b'\\' as i8);
    let bs512 = _mm512_set1_epi8(b'\\' as i8);
    let mut i = 0;
    while i + 32 <= b.len() {
        let x = _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i);
        let ctl = _mm256_cmplt_epu8_mask(x, sp);
        let m0 = _mm256_cmpeq_epi8_mask(x, q) | _mm256_cmpeq_epi8_mask(x, bsv);
        out.reserve(64);
        let len = out.len();
        let dst = out.as_mut_ptr().add(len);
        if ctl | m0 == 0 {
            _mm256_storeu_si256(dst as *mut __m256i, x);
            out.set_len(len + 32);
            i += 32;
            continue;
        }
        let short = _mm256_test_epi8_mask(_mm256_permutexvar_epi8(x, cls), _mm256_set1_epi8(1));
        if ctl & !short != 0 {
            escape(out, &b[i..i + 32], false);
            i += 32;
            continue;
        }
        let m = ctl | m0;
        let mut mm = m as u64;
        let mut bsl = 0u64;
        let mut n = 0;
        while mm != 0 {
            bsl |= 1u64 << (mm.trailing_zeros() + n);
            n += 1;
            mm &= mm - 1;
        }
        let total = 32 + n;
        let full = if total == 64 { !0u64 } else { (1u64 << total) - 1 };
        let e = _mm512_maskz_expand_epi8(full & !bsl, _mm512_zextsi256_si512(x));
        let e = _mm512_mask_mov_epi8(e, bsl << 1, _mm512_permutexvar_epi8(e, table));
        let e = _mm512_mask_mov_epi8(e, bsl, bs512);
        _mm512_storeu_si512(dst as *mut _, e);
        out.set_len(len + total as usize);
        i += 32;
    }
    i + escape(out, &b[i..], false)
}

fn main() {
    assert!(is_x86_feature_detected!("avx512vbmi2"));
    // correctness on random text
    let mut seed = 12345u64;
    let mut rnd = || { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; seed };
    for round in 0..20000 {
        let n = (rnd() % 300) as usize;
        let s: Vec<u8> = (0..n).map(|_| { let r = rnd() % 100; match r { 0..=5 => (rnd() % 32) as u8, 6..=8 => b'"', 9..=11 => b'\\', 12..=20 => b'\n', _ => b'a' + (rnd() % 26) as u8 } }).collect();
        let (mut a, mut v) = (Vec::new(), Vec::new());
        escape(&mut a, &s, false);
        unsafe { escape_v(&mut v, &s) };
        assert_eq!(a, v, "round {round}");
    }
    let line = b"some log line with words 1234567890\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(256 << 20).collect();
    let mut out = Vec::with_capacity(text.len() * 2);
    let mut out2 = Vec::with_capacity(text.len() * 2);
    for c in text.chunks(32768) { escape(&mut out, c, false); escape(&mut out2, c, false); }
    for _ in 0..4 {
        out.clear(); out2.clear();
        let t = std::time::Instant::now();
        for c in text.chunks(32768) { escape(&mut out, c, false); }
        let a = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for c in text.chunks(32768) { unsafe { escape_v(&mut out2, c) }; }
        let b = t.elapsed().as_secs_f64();
        assert_eq!(out, out2);
        println!("current {:.3} s/GiB  vbmi2 {:.3} s/GiB", a * 4.0, b * 4.0);
    }
}
