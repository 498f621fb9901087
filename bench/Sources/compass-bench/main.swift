import Foundation

/// Flags as `--key value` pairs and bare `--flag`s.
struct Args {
    let list: [String]
    func has(_ key: String) -> Bool { list.contains(key) }
    func string(_ key: String) -> String? {
        guard let i = list.firstIndex(of: key), i + 1 < list.count else { return nil }
        return list[i + 1]
    }
    func int(_ key: String) -> Int? { string(key).flatMap { Int($0) } }
    func double(_ key: String) -> Double? { string(key).flatMap { Double($0) } }
}

let usage = """
usage: compass-bench suite --bin DIR --out FILE [--quick] [--seconds S] [--cbroker PATH]
                           [--only raw,dispatch,broker-ceiling,client,latency,scaling,recovery,admission]
       compass-bench workers --backend EP [--count N] [--credit N] [--latency-ms MS] [--heartbeat-ms MS] [--max-seconds S]
                               [--curve-server-key FILE|Z85 --curve-key FILE]
       compass-bench echo [--bind EP] [--max-seconds S]
bench/run is the usual way in: it installs, builds and runs everything, peers included.
"""

signal(SIGPIPE, SIG_IGN)
let argv = Array(CommandLine.arguments.dropFirst())
let args = Args(list: Array(argv.dropFirst()))
do {
    switch argv.first {
    case "suite":
        let suite = try Suite(args)
        try suite.run(outPath: args.string("--out") ?? "compass-bench.json")
    case "workers":
        try workersMain(args)
    case "echo":
        try echoMain(args)
    default:
        print(usage)
        exit(argv.first == nil || argv.first == "--help" ? 0 : 2)
    }
} catch {
    FileHandle.standardError.write(Data("compass-bench: \(error)\n".utf8))
    Child.stopAll()
    exit(1)
}
