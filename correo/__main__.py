from correo.cli import main

main()
