//! What every object built from this crate needs once: a panic handler and the licence
//! section (GPL, for the GPL-only helpers such as `bpf_fib_lookup`).

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never entered.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
