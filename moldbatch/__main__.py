from moldbatch.cli import main

main()
