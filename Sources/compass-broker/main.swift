import CompassCommands

BrokerCommand.main()
