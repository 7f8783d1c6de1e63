from pheanq.cli import main

main()
