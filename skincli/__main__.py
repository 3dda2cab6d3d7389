from skincli.cli import main

main()
