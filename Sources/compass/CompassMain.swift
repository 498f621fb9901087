import CompassCommands

/// `compass`, and also `compass-broker` / `compass-worker` when invoked under those names (a
/// release bundle ships one binary and two links to it).
@main
struct CompassMain {
    static func main() async {
        switch CommandLine.arguments.first.map({ $0.split(separator: "/").last.map(String.init) ?? $0 }) {
        case "compass-broker": BrokerCommand.main()
        case "compass-worker": WorkerCommand.main()
        default: await CompassCommand.main()
        }
    }
}
