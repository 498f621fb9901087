import CompassCommands

@main
struct CompassMain {
    static func main() async {
        await CompassCommand.main()
    }
}
