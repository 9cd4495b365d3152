from stanceclf.cli import main

main()
