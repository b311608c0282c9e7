from tickler.cli import main

main()
