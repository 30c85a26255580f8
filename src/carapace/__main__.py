from carapace.cli import main

main()
