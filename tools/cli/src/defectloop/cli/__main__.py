from defectloop.cli.app import main

main()
