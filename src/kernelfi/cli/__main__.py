from kernelfi.cli import main

main()
