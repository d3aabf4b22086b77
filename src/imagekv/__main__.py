from imagekv.cli import main

main()
