from dsmcli.cli import main

main()
