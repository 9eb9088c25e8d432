//! AFL++ persistent-mode wrapper of [`switchboard_fuzz::mcp`]; run outside afl-fuzz it reads one
//! input from stdin, which is how a crash is replayed.
#![forbid(unsafe_code)]

fn main() {
    afl::fuzz!(|data: &[u8]| switchboard_fuzz::mcp::run(data));
}
