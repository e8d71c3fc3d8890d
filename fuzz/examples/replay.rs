//! Runs one input through one target without libFuzzer, to debug it on the stable toolchain:
//! `DHTUN_FUZZ_TRACE=1 cargo run --example replay -- device path/to/crash`.

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: replay TARGET FILE");
        std::process::exit(2);
    };
    let data = std::fs::read(&path).expect("reading the input");
    let run: fn(&[u8]) = match target.as_str() {
        "wire" => dhtun_fuzz::wire::run,
        "handshake" => dhtun_fuzz::handshake::run,
        "device" => dhtun_fuzz::device::run,
        "packet" => dhtun_fuzz::packet::run,
        "record" => dhtun_fuzz::record::run,
        "private_record" => dhtun_fuzz::private_record::run,
        "krpc" => dhtun_fuzz::krpc::run,
        "config" => dhtun_fuzz::config::run,
        other => {
            eprintln!("no target {other}");
            std::process::exit(2);
        }
    };
    run(&data);
    eprintln!("{target} passed {path}");
}
