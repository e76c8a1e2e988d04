from neurofuse.cli import main

main()
