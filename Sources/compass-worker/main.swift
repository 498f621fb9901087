import CompassCommands

WorkerCommand.main()
