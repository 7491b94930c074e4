//! Cross-checks against independent implementations, for this crate's
//! tests and covm's (feature `test-support`; they need `python3`):
//!
//! - IBM's **sev-snp-measure** (PyPI), the external reference for the SNP
//!   launch digest, the VMSA layout, the kernel hashes table and the vCPU
//!   types: [`sev_snp_measure`] runs a script with it importable (from
//!   `COVM_SEV_SNP_MEASURE`, a `pip install --target` directory, or the
//!   Python path), and [`reference_digest`] has it compute the digest of a
//!   [`Launch`] from its own parts;
//! - an **independent MRTD** written in Python from the TDX module ABI
//!   ([`independent_mrtd`]).
//!
//! Each returns `None`, reporting the skip and why
//! (`covm_test_support::skip`: standard error past libtest's capture, and
//! `COVM_SKIP_LOG`), when it cannot run; a script that fails once started
//! panics.

use crate::hex;
use crate::kernel_hashes::TABLE_OFFSET;
use crate::launch::{Launch, PageType, PAGE_SIZE};
use crate::mrtd::TdMeasurement;
use crate::snp::HASHES_WHAT;
use crate::vmsa::{Segment, VcpuState, VMSA_GPA};
use covm_test_support::skip;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;
use std::process::Command;

/// Runs `script` with `sevsnpmeasure` importable: from
/// `COVM_SEV_SNP_MEASURE` (a `pip install --target` directory, set by
/// covm's .ci/run) or the Python path. `None`, the reason reported as a skip,
/// when it cannot run; a script that fails once imported panics.
pub fn sev_snp_measure(script: &str) -> Option<String> {
    let python = || {
        let mut cmd = Command::new("python3");
        if let Some(dir) = std::env::var_os("COVM_SEV_SNP_MEASURE") {
            cmd.env("PYTHONPATH", dir);
        }
        cmd
    };
    let probe = python().arg("-c").arg("import sevsnpmeasure.gctx").output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            skip(format!(
                "sev-snp-measure is not importable (pip install sev-snp-measure, or run .ci/run): {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
            ));
            return None;
        }
        Err(e) => {
            skip(format!("cannot run python3 for the sev-snp-measure cross-check: {e}"));
            return None;
        }
    }
    let out = python()
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 ran a moment ago");
    assert!(
        out.status.success(),
        "the sev-snp-measure script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The VMSA fields covm sets but RDX, by sev-snp-measure's names.
fn state_json(s: &VcpuState) -> Value {
    let seg = |g: &Segment| json!([g.selector, g.attrib, g.limit, g.base]);
    json!({
        "es": seg(&s.es), "cs": seg(&s.cs), "ss": seg(&s.ss), "ds": seg(&s.ds), "fs": seg(&s.fs),
        "gs": seg(&s.gs), "gdtr": seg(&s.gdtr), "ldtr": seg(&s.ldtr), "idtr": seg(&s.idtr),
        "tr": seg(&s.tr), "efer": s.efer, "cr4": s.cr4, "cr3": s.cr3, "cr0": s.cr0, "dr7": s.dr7,
        "dr6": s.dr6, "rflags": s.rflags, "rip": s.rip, "rsp": s.rsp, "rax": s.rax, "g_pat": s.g_pat,
        "rcx": s.rcx, "rbx": s.rbx, "rbp": s.rbp, "rsi": s.rsi, "rdi": s.rdi, "xcr0": s.xcr0,
        "mxcsr": s.mxcsr, "x87_fcw": s.x87_fcw,
    })
}

/// sev-snp-measure's launch digest over the sequence in the listing file
/// (its first argument): NORMAL pages from the listed bytes, UNMEASURED,
/// ZERO, SECRETS and CPUID pages by address, the kernel hashes page built
/// by its `SevHashes` from the files themselves, and each VMSA built by
/// its `VMSA.build_save_area` with RDX from its `CPU_SIGS`, covm's fields
/// set over it.
pub const REFERENCE_DIGEST: &str = r#"
import json, sys
from sevsnpmeasure.gctx import GCTX
from sevsnpmeasure.sev_hashes import SevHashes
from sevsnpmeasure.vcpu_types import CPU_SIGS
from sevsnpmeasure.vmm_types import VMMType
from sevsnpmeasure.vmsa import VMSA, VmcbSeg
d = json.load(open(sys.argv[1]))
g = GCTX()
for p in d["pages"]:
    t, gpa = p["type"], p["gpa"]
    if t == "normal":
        g.update_normal_pages(gpa, bytes.fromhex(p["data"]))
    elif t == "unmeasured":
        g.update_unmeasured_pages(gpa, 4096)
    elif t == "zero":
        g.update_zero_pages(gpa, 4096)
    elif t == "secrets":
        g.update_secrets_page(gpa)
    elif t == "cpuid":
        g.update_cpuid_page(gpa)
    elif t == "hashes":
        h = d["hashes"]
        g.update_normal_pages(gpa, SevHashes(h["kernel"], h["initrd"], h["cmdline"]).construct_page(h["offset"]))
    elif t == "vmsa":
        assert gpa == GCTX.VMSA_GPA
        sig = CPU_SIGS[d["vcpu_type"]] if d["vcpu_type"] else 0
        area = VMSA.build_save_area(0xfffffff0, 0, sig, VMMType.QEMU)
        for k, v in p["state"].items():
            setattr(area, k, VmcbSeg(*v) if isinstance(v, list) else v)
        g.update_vmsa_page(bytes(area))
    else:
        raise ValueError(t)
print(g.hex_ld())
"#;

/// The files sev-snp-measure builds the kernel hashes table from.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashFiles<'a> {
    /// The kernel file (None: no hashes table in the launch).
    pub kernel: Option<&'a Path>,
    /// The initrd file.
    pub initrd: Option<&'a Path>,
    /// The command line.
    pub cmdline: &'a str,
}

/// sev-snp-measure's launch digest (hex) of `launch`, an SEV-SNP launch
/// as [`crate::snp::SnpLaunch::apply`] returns it, whose vCPUs are of
/// `vcpu_type` (their RDX is left to sev-snp-measure's `CPU_SIGS`) and
/// whose kernel hashes table (the NORMAL page named [`HASHES_WHAT`])
/// sev-snp-measure builds from `hashes`. The listing it reads is written
/// to `listing`. None when sev-snp-measure cannot run.
pub fn reference_digest(
    launch: &Launch,
    vcpu_type: Option<&str>,
    hashes: &HashFiles,
    listing: &Path,
) -> Option<String> {
    let mut pages: Vec<Value> = launch
        .pages
        .iter()
        .map(|p| match (p.page_type, p.what) {
            (PageType::Normal, HASHES_WHAT) => json!({"type": "hashes", "gpa": p.gpa}),
            (PageType::Normal, _) => {
                let data = p.contents.as_deref().expect("NORMAL pages have contents");
                json!({"type": "normal", "gpa": p.gpa, "data": hex(&data[..])})
            }
            (PageType::Vmsa, _) => panic!("a VMSA among the pages: VMSAs come from the vCPUs"),
            (t, _) => json!({"type": t.name(), "gpa": p.gpa}),
        })
        .collect();
    pages.extend(
        launch
            .vcpus
            .iter()
            .map(|v| json!({"type": "vmsa", "gpa": VMSA_GPA, "state": state_json(v)})),
    );
    let path = |p: Option<&Path>| p.map(|p| p.display().to_string());
    let document = json!({
        "pages": pages,
        "vcpu_type": vcpu_type,
        "hashes": {
            "kernel": path(hashes.kernel),
            "initrd": path(hashes.initrd),
            "cmdline": hashes.cmdline,
            "offset": TABLE_OFFSET,
        },
    });
    std::fs::write(listing, document.to_string()).expect("the listing is written");
    let script = format!(
        "import sys\nsys.argv = ['x', {:?}]\n{REFERENCE_DIGEST}",
        listing.display().to_string()
    );
    sev_snp_measure(&script)
}

/// MRTD (hex) of the pages `td` lists (their bytes from `launch`),
/// computed by a Python program written from the TDX module ABI, not from
/// this crate: it reads each page's address, whether it is extended and
/// its bytes from the listing it is given (written to `listing`), and adds
/// and extends them itself. None, reporting the skip, without python3.
pub fn independent_mrtd(launch: &Launch, td: &TdMeasurement, listing: &Path) -> Option<String> {
    let contents: HashMap<u64, &[u8; PAGE_SIZE]> = launch
        .pages
        .iter()
        .filter_map(|p| Some((p.gpa, p.contents.as_deref()?)))
        .collect();
    let zero = [0u8; PAGE_SIZE];
    let mut text = String::new();
    for p in &td.pages {
        let page = if p.extended { contents[&p.gpa] } else { &zero };
        let _ = writeln!(text, "{:x} {} {}", p.gpa, u8::from(p.extended), hex(page));
    }
    std::fs::write(listing, text).expect("the listing is written");
    let script = format!(
        r#"
import hashlib, struct
h = hashlib.sha384()
for line in open({listing:?}):
    gpa, extended, data = line.split()
    gpa, data = int(gpa, 16), bytes.fromhex(data)
    h.update(b"MEM.PAGE.ADD" + bytes(4) + struct.pack("<Q", gpa) + bytes(104))
    if extended == "1":
        for i in range(0, 4096, 256):
            h.update(b"MR.EXTEND" + bytes(7) + struct.pack("<Q", gpa + i) + bytes(104) + data[i:i + 256])
print(h.hexdigest())
"#,
        listing = listing.display().to_string()
    );
    let out = match Command::new("python3").arg("-c").arg(&script).output() {
        Ok(out) => out,
        Err(e) => {
            skip(format!("cannot run python3 for the MRTD cross-check: {e}"));
            return None;
        }
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
