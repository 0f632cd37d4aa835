from smoothl1.cli import main

main()
