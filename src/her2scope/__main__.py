from her2scope.cli import main

main()
